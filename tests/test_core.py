"""reasonrl.core against hand-computed values and properties (no model involved)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonrl.core import (
    LOSS_TYPES,
    WINDOW_TOKENS,
    StepNormaliser,
    chunk_weight,
    dropout,
    group_advantages,
    grpo_loss,
    high_entropy_mask,
    k3_kl,
    nanstd,
    normalised_by,
    sequence_metrics,
    token_entropy,
    token_logprobs,
)

E = math.e

# ---------------------------------------------------------------- advantages: the seed notebook's numbers


def test_seed_notebook_group_statistics():
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    grouped = rewards.view(-1, 4)
    assert grouped.mean(1).tolist() == [0.25, 0.0]
    assert nanstd(grouped, dim=1).tolist() == [0.5, 0.0]
    advantages = group_advantages(rewards, num_generations=4, eps=1e-8)
    assert advantages.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], abs=1e-6)


def test_scale_batch_and_none():
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    # "none" (Dr. GRPO): r - group mean, no division
    assert group_advantages(rewards, 4, scale="none").tolist() == [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]
    # "batch": group mean, std of all 8 rewards: sqrt((1 - 1/8)^2 + 7 (1/8)^2) / 7) = sqrt(1/8) = 0.35355
    batch_std = math.sqrt(1 / 8)
    expected = [0.75 / (batch_std + 1e-4)] + [-0.25 / (batch_std + 1e-4)] * 3 + [0.0] * 4
    assert group_advantages(rewards, 4, scale="batch").tolist() == pytest.approx(expected, rel=1e-6)


def test_nan_rewards_are_left_out_and_get_zero_advantage():
    nan = float("nan")
    # group 1: [2, nan, 0, 1] -> mean 1, std of {2, 0, 1} = 1 -> [1, 0, -1, 0]
    # group 2: all unscorable -> 0; group 3: one scorable value, std undefined -> 0
    rewards = torch.tensor([2.0, nan, 0, 1, nan, nan, nan, nan, 5.0, nan, nan, nan])
    advantages = group_advantages(rewards, 4, eps=0.0)
    assert advantages.tolist() == pytest.approx([1, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0])


def test_indivisible_rewards_raise_with_the_numbers():
    with pytest.raises(ValueError, match=r"7 rewards .* num_generations=4"):
        group_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 4, scale="global")


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda groups: st.tuples(
            st.just(groups),
            st.integers(2, 6).flatmap(
                lambda g: st.tuples(
                    st.just(g), st.lists(st.floats(-100, 100), min_size=groups * g, max_size=groups * g)
                )
            ),
        )
    ),
    st.sampled_from(["group", "batch", "none"]),
    st.floats(-1000, 1000),
)
def test_advantage_properties(data, scale, shift):
    groups, (g, values) = data
    rewards = torch.tensor(values, dtype=torch.float64).float()
    advantages = group_advantages(rewards, g, scale=scale)
    # each group's advantages have mean 0 (scale only divides by a positive number)
    group_means = advantages.view(groups, g).mean(1)
    scale_of_values = advantages.abs().max().item() + 1
    assert group_means.abs().max().item() <= 1e-5 * scale_of_values
    # a constant added to every reward changes no advantage
    shifted = group_advantages(rewards + shift, g, scale=scale)
    tolerance = 1e-3 * (1 + abs(shift) / 10) if scale == "none" else 1e-2
    assert torch.allclose(shifted, advantages, atol=tolerance, rtol=1e-3)


# ---------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [1, 5, 512])
def test_token_logprobs_equal_log_softmax_gather(temperature, chunk_rows):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50) * 4
    ids = torch.randint(0, 50, (3, 7))
    reference = torch.log_softmax(logits / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
    ours = token_logprobs(logits, ids, temperature=temperature, chunk_rows=chunk_rows)
    assert ours.shape == (3, 7)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_token_logprobs_gradient_matches_and_bf16_is_upcast():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 30, requires_grad=True)
    ids = torch.randint(0, 30, (2, 4))
    token_logprobs(logits, ids, chunk_rows=3).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, ids[..., None]).sum().backward()
    assert torch.allclose(ours, logits.grad, atol=1e-6)
    assert token_logprobs(logits.detach().bfloat16(), ids).dtype == torch.float32


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("uses", ["both", "logps", "entropy"])
def test_token_entropy_is_differentiable_and_its_gradient_matches_autograd(temperature, uses):
    """The entropy bonus (entropy_coef) backpropagates through the entropy: dH/dx_j = -p_j (log p_j + H) / T, alone
    or added to the log-probs' gradient; the logits are left as they were (fp32 chunks are views of them)."""
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    kept = logits.detach().clone()
    ids = torch.randint(0, 11, (2, 5))
    w_logps, w_entropy = torch.randn(2, 5), torch.randn(2, 5)
    logps, entropy = token_logprobs(logits, ids, temperature, chunk_rows=3, with_entropy=True)
    ((logps * w_logps).sum() * (uses != "entropy") + (entropy * w_entropy).sum() * (uses != "logps")).backward()
    reference_logits = kept.clone().requires_grad_(True)
    log_p = torch.log_softmax(reference_logits / temperature, -1)
    reference_entropy = -(log_p.exp() * log_p).sum(-1)
    reference_logps = log_p.gather(-1, ids[..., None]).squeeze(-1)
    ((reference_logps * w_logps).sum() * (uses != "entropy")
     + (reference_entropy * w_entropy).sum() * (uses != "logps")).backward()
    assert torch.allclose(entropy, reference_entropy, atol=1e-5)
    assert torch.allclose(logits.grad, reference_logits.grad, atol=1e-5)
    assert torch.equal(logits.detach(), kept)


@settings(max_examples=30, deadline=None)
@given(temperature=st.sampled_from([1.0, 0.6, 1.7]), chunk_rows=st.integers(1, 9),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), strided=st.booleans(), seed=st.integers(0, 10_000))
def test_token_logprobs_backward_and_entropy_equal_autograds(temperature, chunk_rows, dtype, strided, seed):
    # the hand-written backward against autograd through the reference expression, on fp32 and bf16 logits and on
    # a strided view (the model's logits[:, :-1]); the entropy against token_entropy
    generator = torch.Generator().manual_seed(seed)
    full = (torch.randn(3, 9, 40, generator=generator) * 3).to(dtype)
    ids = torch.randint(0, 40, (3, 8), generator=generator)
    upstream = torch.randn(3, 8, generator=generator)
    grads = []
    for ours in (True, False):
        leaf = full.clone().requires_grad_(True)
        logits = leaf[:, :-1] if strided else leaf[:, 1:].contiguous()
        if ours:
            logps, entropy = token_logprobs(logits, ids, temperature, chunk_rows=chunk_rows, with_entropy=True)
        else:
            logps = torch.log_softmax(logits.float() / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
            reference_logps = logps.detach()
        (logps * upstream).sum().backward()
        grads.append(leaf.grad)
    assert torch.allclose(logps.detach(), reference_logps, atol=1e-5)
    assert torch.allclose(entropy, token_entropy(logits.detach(), temperature), atol=1e-5)
    assert grads[0].dtype == dtype
    scale = grads[1].float().abs().max().item()
    tolerance = (1e-6 if dtype == torch.float32 else 1e-2) * scale  # bf16: the rounding of a bf16 gradient
    assert (grads[0].float() - grads[1].float()).abs().max().item() <= tolerance


def test_token_entropy_hand_values():
    # uniform over 4 tokens: log 4; one-hot (large margin): ~0
    logits = torch.tensor([[[0.0, 0, 0, 0], [100.0, 0, 0, 0]]])
    assert token_entropy(logits).tolist()[0] == pytest.approx([math.log(4), 0.0], abs=1e-6)
    # temperature 2 on logits [2, 0]: p = softmax([1, 0])
    p = 1 / (1 + math.exp(-1))
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert token_entropy(torch.tensor([[[2.0, 0.0]]]), temperature=2.0).item() == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- loss: hand-computed clip cases


def _one_token_loss(log_ratio, advantage, **kwargs):
    logps = torch.tensor([[log_ratio]])
    old = torch.zeros(1, 1)
    loss, metrics = grpo_loss(logps, old, None, torch.tensor([advantage]), torch.ones(1, 1), **kwargs)
    return loss.item(), metrics


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(
    "log_ratio, advantage, kwargs, expected, clipped",
    [
        # ratio e, A=+1, eps 0.2: clipped to 1.2, loss -1.2 (high clip)
        (1.0, 1.0, {}, -1.2, "high"),
        # ratio e, A=-1: the pessimistic branch is the unclipped e, loss +e; not counted as clipped
        (1.0, -1.0, {}, E, None),
        # ratio e, A=-1, delta 1.5 caps the unclipped ratio: loss +1.5
        (1.0, -1.0, {"delta": 1.5}, 1.5, None),
        # epsilon_high 0.28 lifts the upper bound: loss -1.28
        (1.0, 1.0, {"epsilon_high": 0.28}, -1.28, "high"),
        # ratio 1/e, A=-1: clipped up to 0.8, loss +0.8 (low clip)
        (-1.0, -1.0, {}, 0.8, "low"),
        # ratio 1/e, A=+1: unclipped 1/e is the minimum, loss -1/e
        (-1.0, 1.0, {}, -1 / E, None),
        # ratio inside the trust region: plain ratio * A
        (0.1, 2.0, {}, -2 * math.exp(0.1), None),
    ],
)
def test_clip_cases(level, log_ratio, advantage, kwargs, expected, clipped):
    loss, metrics = _one_token_loss(log_ratio, advantage, importance_sampling_level=level, loss_type="grpo", **kwargs)
    assert loss == pytest.approx(expected, rel=1e-6)
    assert metrics["clip_ratio/high_mean"].item() == (1.0 if clipped == "high" else 0.0)
    assert metrics["clip_ratio/low_mean"].item() == (1.0 if clipped == "low" else 0.0)
    assert metrics["clip_ratio/region_mean"].item() == (1.0 if clipped else 0.0)


def test_sequence_level_uses_the_mean_log_ratio():
    # token log-ratios [0, 2] (mean 1 -> ratio e for the whole sequence), A=+1, eps 0.2: every token clipped to 1.2
    logps = torch.tensor([[0.0, 2.0, 7.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding and must not count
    loss, _ = grpo_loss(logps, old, None, torch.tensor([1.0]), mask, importance_sampling_level="sequence",
                        loss_type="grpo")
    assert loss.item() == pytest.approx(-1.2)
    # token level on the same data: ratios [1, e^2] -> per token [-1, -1.2], mean -1.1
    loss, _ = grpo_loss(logps, old, None, torch.tensor([1.0]), mask, loss_type="grpo")
    assert loss.item() == pytest.approx(-1.1)


def test_k3_kl_hand_value_and_penalty():
    assert k3_kl(torch.tensor([0.0]), torch.tensor([0.5])).item() == pytest.approx(math.exp(0.5) - 1.5)
    assert k3_kl(torch.tensor([0.3]), torch.tensor([0.3])).item() == 0.0
    logps = torch.zeros(1, 2)
    ref = torch.tensor([[0.5, -0.5]])
    loss, metrics = grpo_loss(logps, None, ref, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1, loss_type="bnpo")
    kl = ((math.exp(0.5) - 1.5) + (math.exp(-0.5) - 0.5)) / 2
    assert metrics["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(0.1 * kl, rel=1e-6)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, None, None, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)


def test_bias_corrected_kl_multiplies_by_the_ratio():
    logps = torch.tensor([[1.0]])
    old = torch.zeros(1, 1)
    ref = torch.zeros(1, 1)
    _, metrics = grpo_loss(logps, old, ref, torch.tensor([0.0]), torch.ones(1, 1), beta=1.0,
                           use_bias_correction_kl=True)
    assert metrics["kl"].item() == pytest.approx((math.exp(-1) + 1 - 1) * E, rel=1e-6)


def test_aggregations_by_hand():
    # two sequences: lengths 1 and 3, on-policy (ratio 1), advantages +1 and -2 -> per-token loss -A
    logps = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -2.0])
    expected = {
        "grpo": (-1 + 2) / 2,  # mean of per-sequence means
        "bnpo": (-1 + 2 * 3) / 4,  # token mean of the batch
        "dr_grpo": (-1 + 6) / (2 * 10),  # B * max_completion_length
        "dapo": (-1 + 6) / 4,  # token sum / token count
        "luspo": (-1 + 6) / 2,  # each sequence's token sum, then the mean over sequences
        # sapo at ratio 1: -A * 4 / tau * sigmoid(0) = -2 A / tau (tau 1 for A > 0, 1.05 otherwise), as grpo
        "sapo": (-2 + 4 / 1.05) / 2,
        "cispo": 0.0,  # -min(1, cap) * A * logp with logp 0
        "vespo": 0.0,  # -phi * A * logp with logp 0
    }
    assert set(expected) == set(LOSS_TYPES)
    for loss_type, value in expected.items():
        loss, _ = grpo_loss(logps, None, None, advantages, mask, loss_type=loss_type, max_completion_length=10)
        assert loss.item() == pytest.approx(value), loss_type
    # dapo with the window's token count from the trainer (e.g. 20 tokens over the accumulation window)
    loss, _ = grpo_loss(logps, None, None, advantages, mask, loss_type="dapo", num_items=torch.tensor(20.0))
    assert loss.item() == pytest.approx(5 / 20)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, None, None, advantages, mask, loss_type="ppo")


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_is_zero_at_ratio_one_but_gradient_is_not(loss_type):
    # The seed notebook's point: with ratio 1 and ref == policy the loss value is exactly 0 (advantages sum to 0
    # within the batch) but its gradient, -A / normaliser per token, still pushes good completions up.
    advantages = group_advantages(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]), 4, eps=1e-8)
    logps = torch.full((8, 3), -1.3, requires_grad=True)
    loss, metrics = grpo_loss(logps, None, logps.detach(), advantages, torch.ones(8, 3), beta=0.04,
                              loss_type=loss_type)
    assert loss.item() == 0.0
    assert metrics["kl"].item() == 0.0
    loss.backward()
    normaliser = {"grpo": 8 * 3, "bnpo": 24, "dr_grpo": 8 * 3, "dapo": 24}[loss_type]
    expected_grad = (-advantages / normaliser)[:, None].expand(8, 3)
    assert torch.allclose(logps.grad, expected_grad, atol=1e-6)
    assert logps.grad[0, 0].item() == pytest.approx(-1.5 / 24, rel=1e-5)


def _one_sequence(log_ratios, logps, advantage, **kwargs):
    """grpo_loss of one sequence with these token log-ratios and log-probs; returns (loss, d loss / d logps,
    metrics)."""
    logps = torch.tensor([logps], dtype=torch.float64, requires_grad=True)
    old = logps.detach() - torch.tensor([log_ratios], dtype=torch.float64)
    loss, metrics = grpo_loss(logps, old, None, torch.tensor([advantage]), torch.ones_like(logps), **kwargs)
    loss.backward()
    return loss.item(), logps.grad[0].tolist(), metrics


@pytest.mark.parametrize(
    ("advantage", "cap", "weight", "clipped"),
    [
        (1.0, 2.0, 2.0, 1.0),  # ratio e above the cap: weight 2, counted as capped (A > 0)
        (1.0, 5.0, E, 0.0),  # under the cap: the plain ratio
        (-1.0, 2.0, 2.0, 0.0),  # capped too, but TRL counts only A > 0
    ],
)
def test_cispo_by_hand(advantage, cap, weight, clipped):
    # one token, logp -1, log-ratio 1 (ratio e): loss -sg(min(e, cap)) * A * logp = weight * A, dapo's token mean;
    # the gradient is -weight * A on logp (the weight is detached, so no token is cut from the gradient)
    loss, grad, metrics = _one_sequence([1.0], [-1.0], advantage, loss_type="cispo", epsilon_high=cap)
    assert loss == pytest.approx(weight * advantage)
    assert grad == pytest.approx([-weight * advantage])
    assert metrics["cispo_clip_ratio"].item() == clipped
    assert set(metrics) == {"kl", "cispo_clip_ratio"}


@pytest.mark.parametrize(
    ("log_ratio", "advantage", "temperatures", "loss", "grad"),
    [
        # ratio 1: -A * 4 / tau * sigmoid(0) = -2 A / tau; gradient -A * 4 * sigmoid'(0) * r = -A (PPO's, any tau)
        (0.0, 1.0, (1.0, 1.05), -2.0, -1.0),
        (0.0, -1.0, (1.0, 2.0), 1.0, 1.0),  # A < 0 takes temperature_neg = 2: loss -(-1) * 4 / 2 / 2
        # ratio 2, A = 1, tau 1: loss -4 sigmoid(1); gradient -4 sigmoid(1) (1 - sigmoid(1)) * 2, smaller than PPO's -2
        (math.log(2), 1.0, (1.0, 1.05), -4 / (1 + math.exp(-1)),
         -8 * math.exp(-1) / (1 + math.exp(-1)) ** 2),
    ],
)
def test_sapo_by_hand(log_ratio, advantage, temperatures, loss, grad):
    value, gradient, metrics = _one_sequence([log_ratio], [-1.0], advantage, loss_type="sapo",
                                             sapo_temperature_pos=temperatures[0],
                                             sapo_temperature_neg=temperatures[1])
    assert value == pytest.approx(loss)
    assert gradient == pytest.approx([grad])
    assert set(metrics) == {"kl"}  # TRL logs no clip ratios for sapo


@pytest.mark.parametrize(
    ("advantage", "phi"),
    [
        (1.0, math.exp(3 + 2 * 1 - 3 * E)),  # k_pos 2, lambda_pos 3: log phi = lambda + k log w - lambda w, w = e
        (-1.0, math.exp(2 + 3 * 1 - 2 * E)),  # k_neg 3, lambda_neg 2
    ],
)
def test_vespo_by_hand(advantage, phi):
    # two tokens with log-ratios 0.4 and 0.6: the sequence weight w is their product, e; logps -1, -2
    loss, grad, metrics = _one_sequence([0.4, 0.6], [-1.0, -2.0], advantage, loss_type="vespo")
    assert metrics["vespo/phi_seq_mean"].item() == pytest.approx(phi, rel=1e-6)
    assert loss == pytest.approx(phi * advantage * 3 / 2, rel=1e-6)  # -phi * A * (-1 - 2), over 2 tokens
    assert grad == pytest.approx([-phi * advantage / 2] * 2, rel=1e-6)  # phi carries no gradient
    # on-policy, w = 1 and phi(1) = 1: plain REINFORCE
    loss, grad, metrics = _one_sequence([0.0, 0.0], [-1.0, -2.0], advantage, loss_type="vespo")
    assert metrics["vespo/phi_seq_mean"].item() == pytest.approx(1.0)
    assert grad == pytest.approx([-advantage / 2] * 2)


def test_luspo_scales_each_sequence_by_its_length():
    # GSPO's clipped sequence-level loss times the sequence's length: lengths 1 and 3, mean log-ratios 1 and 0
    logps = torch.zeros(2, 3)
    old = torch.tensor([[-1.0, 0.0, 0.0], [0.1, -0.1, 0.0]])
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    loss, metrics = grpo_loss(logps, old, None, torch.tensor([1.0, -2.0]), mask, loss_type="luspo",
                              importance_sampling_level="sequence")
    # sequence 0: ratio e clipped to 1.2, -1.2 * 1 token; sequence 1: ratio 1, 2 * 3 tokens; mean over the 2
    assert loss.item() == pytest.approx((-1.2 + 6) / 2)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(0.5)  # a mean over sequences at this level


def test_high_entropy_mask_by_hand():
    entropies = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.7, 5.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])  # 5.0 is padding: neither counted nor kept
    # top 40%: the 0.6 quantile of [0.1, 0.3, 0.5, 0.7, 0.9] is at position 0.6 * 4 = 2.4: 0.5 + 0.4 * 0.2 = 0.58
    assert high_entropy_mask(entropies, mask, 0.4).tolist() == [[False, False, True], [False, True, False]]
    assert high_entropy_mask(entropies, mask, 0.0).tolist() == [[False, False, True], [False, False, False]]
    assert high_entropy_mask(entropies, mask, 1.0).tolist() == mask.bool().tolist()
    # the threshold from a larger pool (other processes' tokens): its 0.6 quantile is 1.0 + 0.4 * 0.2 = 1.08, above
    # every entropy here
    assert not high_entropy_mask(entropies, mask, 0.4, pool=torch.tensor([0.1, 0.9, 1.0, 1.2, 2.0])).any()
    assert not high_entropy_mask(entropies, torch.zeros(2, 3), 0.2).any()  # no loss token, nothing kept


def test_entropy_mask_drops_policy_terms_but_not_kl_or_normaliser():
    # dapo, on-policy, logps 0: per-token policy loss -A. Kept tokens: (0, 2) with A = 1 and (1, 1) with A = -2
    logps = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    keep = torch.tensor([[False, False, True], [False, True, False]])
    loss, _ = grpo_loss(logps, None, None, torch.tensor([1.0, -2.0]), mask, loss_type="dapo", entropy_mask=keep)
    assert loss.item() == pytest.approx((-1 + 2) / 5)  # still divided by all 5 loss tokens, as TRL
    ref = torch.full((2, 3), 0.5)  # KL on every loss token, masked or not
    loss, _ = grpo_loss(logps, None, ref, torch.tensor([1.0, -2.0]), mask, loss_type="dapo", beta=0.1,
                        entropy_mask=keep)
    assert loss.item() == pytest.approx((-1 + 2) / 5 + 0.1 * (math.exp(0.5) - 1.5), rel=1e-6)


def test_normalisers_by_loss_type():
    expected = {"grpo": "rows", "sapo": "rows", "luspo": "rows", "dr_grpo": "rows", "bnpo": "micro_batch_tokens",
                "dapo": "window_tokens", "cispo": "window_tokens", "vespo": "window_tokens"}
    assert {loss_type: normalised_by(loss_type) for loss_type in LOSS_TYPES} == expected
    assert sequence_metrics("token") == {"vespo/phi_seq_mean"}
    assert "clip_ratio/region_mean" in sequence_metrics("sequence")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-50, 50), min_size=6, max_size=6),
    st.lists(st.floats(-50, 50), min_size=6, max_size=6),
    st.sampled_from(LOSS_TYPES),
    st.sampled_from(["token", "sequence"]),
    st.sampled_from([None, 2.0]),
)
def test_loss_finite_for_extreme_log_ratios(log_ratios, ref_gaps, loss_type, level, delta):
    logps = torch.tensor(log_ratios).view(2, 3).requires_grad_()
    old = torch.zeros(2, 3)
    ref = logps.detach() + torch.tensor(ref_gaps).view(2, 3)
    loss, metrics = grpo_loss(logps, old, ref, torch.tensor([1.0, -1.0]), torch.ones(2, 3), beta=0.04,
                              loss_type=loss_type, importance_sampling_level=level, delta=delta)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(logps.grad).all()


@settings(max_examples=100, deadline=None)
@given(data=st.data(), loss_type=st.sampled_from(LOSS_TYPES), level=st.sampled_from(["token", "sequence"]),
       beta=st.sampled_from([0.0, 0.04]), entropy_masked=st.booleans())
def test_chunk_weights_make_the_chunks_add_up_to_the_whole(data, loss_type, level, beta, entropy_masked):
    # a micro-batch split into row chunks: sum of weight x chunk loss == the micro-batch loss, gradients too (an
    # entropy mask, computed once for the micro-batch, is cut with its rows)
    rows, length = data.draw(st.integers(2, 6)), data.draw(st.integers(1, 5))
    seed = data.draw(st.integers(0, 10_000))
    generator = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(rows, length, generator=generator) * 3).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(rows, length, generator=generator)
    ref = logps.detach() + 0.3 * torch.randn(rows, length, generator=generator)
    advantages = torch.randn(rows, generator=generator)
    mask = (torch.rand(rows, length, generator=generator) > 0.3).float()
    keep = torch.rand(rows, length, generator=generator) > 0.5 if entropy_masked else None
    # the window's tokens include other micro-batches
    num_items = mask.sum() + 3 if normalised_by(loss_type) == WINDOW_TOKENS else None
    kwargs = {"loss_type": loss_type, "importance_sampling_level": level, "beta": beta,
              "max_completion_length": length, "num_items": num_items,
              "epsilon_high": 1.1 if loss_type == "cispo" else None}
    whole, _ = grpo_loss(logps, old, ref, advantages, mask, entropy_mask=keep, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole, logps)
    cut = data.draw(st.integers(1, rows - 1))
    total = sum(chunk_weight(loss_type, mask[part], mask, num_items) *
                grpo_loss(logps[part], old[part], ref[part], advantages[part], mask[part],
                          entropy_mask=None if keep is None else keep[part], **kwargs)[0]
                for part in (slice(0, cut), slice(cut, rows)))
    (chunk_grad,) = torch.autograd.grad(total, logps)
    assert total.item() == pytest.approx(whole.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(chunk_grad, whole_grad, atol=1e-6)


def test_chunk_weight_by_hand():
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert chunk_weight("grpo", mask[:1], mask).item() == pytest.approx(1 / 4)
    assert chunk_weight("dr_grpo", mask[:3], mask).item() == pytest.approx(3 / 4)
    assert chunk_weight("bnpo", mask[:2], mask).item() == pytest.approx(3 / 6)
    assert chunk_weight("dapo", mask[:2], mask, num_items=torch.tensor(40.0)).item() == 1.0
    assert chunk_weight("sapo", mask[:1], mask).item() == pytest.approx(1 / 4)
    assert chunk_weight("luspo", mask[:3], mask).item() == pytest.approx(3 / 4)
    for loss_type in ("cispo", "vespo"):
        assert chunk_weight(loss_type, mask[:2], mask, num_items=torch.tensor(40.0)).item() == 1.0
        assert chunk_weight(loss_type, mask[:2], mask).item() == pytest.approx(3 / 6)  # no window count: own tokens


def test_step_normaliser_by_hand():
    # a step of two micro-batches with 3 and 5 loss tokens here; the other process has 1 and 3 (8 + 4 = 12 in all)
    local, total = torch.tensor([3.0, 5.0], dtype=torch.float64), torch.tensor([4.0, 8.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])  # micro-batch 0: 4 rows, 6 loss tokens
    loss = torch.tensor(2.0)
    dapo = StepNormaliser.of_window("dapo", local, total, world_size=2)
    assert dapo.num_items.item() == 6.0  # 12 tokens / 2 processes; DDP averages the two gradients
    assert dapo.scaled(loss, 0, mask[:2], mask).item() == 2.0  # already divided by the step's tokens
    grpo = StepNormaliser.of_window("grpo", local, total, world_size=2)
    assert grpo.divisors == [2.0, 2.0]  # a mean over the step's two micro-batches
    assert grpo.scaled(loss, 0, mask[:1], mask).item() == pytest.approx(2.0 * (1 / 4) / 2)  # 1 of 4 rows
    bnpo = StepNormaliser.of_window("bnpo", local, total, world_size=2)
    assert bnpo.divisors == pytest.approx([2 * 4 / (2 * 3), 2 * 8 / (2 * 5)])  # W * n_r / N per micro-batch
    assert bnpo.scaled(loss, 1, mask[:2], mask).item() == pytest.approx(2.0 * (3 / 6) / (16 / 10))  # 3 of 6 tokens
    alone = StepNormaliser.of_window("bnpo", local, local, world_size=1)
    assert alone.divisors == [2.0, 2.0] and alone.num_items.item() == 8.0


# ---------------------------------------------------------------- dropout: torch's maths with a cheaper mask


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.01, 0.9), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**31))
def test_dropout_keeps_1_minus_p_and_scales_by_its_inverse(p, dtype, seed):
    x = (torch.rand(64, 1024, generator=torch.Generator().manual_seed(seed)) + 0.5).to(dtype)  # no zeros in x
    out = dropout(x, p, generator=torch.Generator().manual_seed(seed + 1))
    kept = out != 0
    n = x.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # a 5-sigma band
    # kept values: x times the fp32 1 / (1 - p) (torch's dropout scale), rounded once to x's dtype (not x times a
    # scale rounded to bf16)
    assert torch.equal(out[kept], (x[kept].float() * torch.tensor(1.0 / (1.0 - p))).to(dtype))


def test_dropout_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    x = torch.randn(8, 16, requires_grad=True)
    g = torch.randn(8, 16)
    torch.manual_seed(0)
    out = dropout(x, 0.25)
    out.backward(g)
    kept = out.detach() != 0
    assert 0 < kept.sum() < x.numel()
    assert torch.equal(x.grad, torch.where(kept, g * (1 / 0.75), torch.zeros_like(g)))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.25).detach(), out.detach())  # the global generator decides the mask
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0)


def test_equal_large_rewards_give_zero_advantages():
    # found by hypothesis: in float32 the mean of nine rewards of 683.4278 is off by one ulp, and dividing that error
    # by a std of the same size gave every completion an advantage of -0.349 instead of 0
    rewards = torch.full((9,), 683.4278401520323).float()
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(rewards, 9, scale=scale), torch.zeros(9))


def test_normalize_then_sum_standardises_each_reward_in_its_group_then_the_sum_over_the_batch():
    """By hand: group 1 has func0 = (1, 3) -> z = (-1/sqrt2, 1/sqrt2) and func1 constant -> 0; group 2 the mirror;
    the sums (-0.7071, 0.7071, -0.7071, 0.7071) have batch mean 0 and std sqrt(2/3), so the advantages are
    +-sqrt(3)/2. A completion no function scored gets 0 and is left out of the batch statistics."""
    from reasonrl.core import normalized_sum_advantages

    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    advantages = normalized_sum_advantages(rewards, torch.tensor([1.0, 1.0]), num_generations=2, eps=0.0)
    half_root3 = 3 ** 0.5 / 2
    assert advantages.tolist() == pytest.approx([-half_root3, half_root3, -half_root3, half_root3], abs=1e-6)
    weighted = normalized_sum_advantages(rewards, torch.tensor([2.0, 0.0]), num_generations=2, eps=0.0)
    # sums (-sqrt2, sqrt2, 0, 0): batch std sqrt(4/3), so +-sqrt(2) / sqrt(4/3) = +-sqrt(3/2)
    assert weighted.tolist() == pytest.approx([-1.5 ** 0.5, 1.5 ** 0.5, 0.0, 0.0], abs=1e-6)
    with_none = torch.cat([rewards, torch.tensor([[math.nan, math.nan], [1.0, 1.0]])])
    result = normalized_sum_advantages(with_none, torch.tensor([1.0, 1.0]), num_generations=2, eps=0.0)
    # row 5 alone in its group scores 0 after standardising: the batch is (-a, a, -a, a, 0) with a = 1/sqrt2, std a
    assert result.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0, 0.0, 0.0], abs=1e-6)


def test_off_policy_mask_drops_only_negative_advantage_sequences_that_drifted():
    from reasonrl.core import off_policy_mask

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    sampling = torch.zeros(3, 3)
    logps = torch.tensor([[-2.0, -2.0, 50.0], [-2.0, -2.0, -2.0], [-0.5, -0.5, -0.5]])  # drift 2, 2, 0.5
    kept = off_policy_mask(torch.tensor([-1.0, 1.0, -1.0]), logps, sampling, mask, threshold=1.0)
    assert kept.tolist() == [[0.0], [1.0], [1.0]]  # the padding column's 50 is not counted
