"""core.sampler_correction: TRL's vllm_importance_sampling_correction (truncated or masked importance sampling
between the engine that sampled and the trainer's forward), checked on hand-computed values."""

import math

import pytest
import torch

from reasonrl import config_checks
from reasonrl.core import SAMPLER_CORRECTION_MODES, grpo_loss, sampler_importance_weights, sampler_mismatch_metrics
from reasonrl.core.losses import vespo_weights

# trainer log-probs, sampler log-probs, mask: log-ratios row 0 [0.5, -1, 0], row 1 [-1, 0, (masked)]
LOGPS = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
SAMPLING = torch.tensor([[-1.5, -1.0, -0.5], [0.0, -1.0, 5.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
E = math.e


@pytest.mark.parametrize("mode, clip_min, clip_max, expected", [
    # token ratios: row 0 [e^0.5, e^-1, 1], row 1 [e^-1, 1, 1 (masked: log-ratio 0)]
    ("token_truncate", 0.5, 1.5, [[1.5, 0.5, 1.0], [0.5, 1.0, 1.0]]),
    ("token_truncate", None, 3.0, [[E ** 0.5, E ** -1, 1.0], [E ** -1, 1.0, 1.0]]),
    ("token_mask", 0.5, 1.5, [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
    # sequence ratios: exp(0.5 - 1 + 0) = e^-0.5, exp(-1 + 0) = e^-1
    ("sequence_truncate", 0.5, 3.0, [[E ** -0.5], [0.5]]),
    ("sequence_mask", 0.5, 3.0, [[E ** -0.5], [0.0]]),
    ("sequence_mask", None, 0.5, [[0.0], [E ** -1]]),
])
def test_importance_weights_by_hand(mode, clip_min, clip_max, expected):
    weights = sampler_importance_weights(LOGPS, SAMPLING, MASK, mode, clip_min, clip_max)
    torch.testing.assert_close(weights, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_a_token_without_a_sampler_logprob_has_ratio_one():
    sampling = SAMPLING.clone()
    sampling[0, 0] = float("nan")
    weights = sampler_importance_weights(LOGPS, sampling, MASK, "token_truncate", None, 3.0)
    assert weights[0, 0] == 1.0 and weights[0, 1] == pytest.approx(E ** -1)
    assert sampler_importance_weights(LOGPS, sampling, MASK, "sequence_mask")[0, 0] == pytest.approx(E ** -1)


def test_weights_carry_no_gradient():
    logps = LOGPS.clone().requires_grad_(True)
    assert not sampler_importance_weights(logps, SAMPLING, MASK, "token_truncate", None, 3.0).requires_grad


def test_mismatch_metrics_by_hand():
    weights = sampler_importance_weights(LOGPS, SAMPLING, MASK, "token_truncate", 0.5, 1.5)
    metrics = sampler_mismatch_metrics(LOGPS, SAMPLING, MASK, weights)
    # |differences| over the 5 masked tokens: 0.5, 1, 0, 1, 0; weights there: 1.5, 0.5, 1, 0.5, 1
    assert metrics["sampling/sampling_logp_difference/mean"] == pytest.approx(0.5)
    assert metrics["sampling/sampling_logp_difference/max"] == pytest.approx(1.0)
    assert metrics["sampling/importance_sampling_ratio/min"] == pytest.approx(0.5)
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx(4.5 / 5)
    assert metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(1.5)
    sequence = sampler_importance_weights(LOGPS, SAMPLING, MASK, "sequence_truncate", 0.5, 3.0)  # [e^-0.5, 0.5]
    metrics = sampler_mismatch_metrics(LOGPS, SAMPLING, MASK, sequence)
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx((E ** -0.5 + 0.5) / 2)


def test_grpo_loss_weighs_the_policy_term_not_the_kl():
    # on-policy: ratio 1, the clipped term is -A per token; grpo averages each row's tokens, then the rows
    weights = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.0, 1.0]])
    advantages = torch.tensor([1.0, -2.0])
    plain, _ = grpo_loss(LOGPS, None, None, advantages, MASK, loss_type="grpo")
    weighted, _ = grpo_loss(LOGPS, None, None, advantages, MASK, loss_type="grpo", sampler_weights=weights)
    assert plain.item() == pytest.approx((-1.0 + 2.0) / 2)
    # row 0: -1 * (1.5 + 0.5 + 1) / 3 = -1; row 1: 2 * (0.5 + 1) / 2 = 1.5
    assert weighted.item() == pytest.approx((-1.0 + 1.5) / 2)
    # the KL term is not weighted: with ref = logps - 1 per token, k3 = e^-1 + 1 - 1 = e^-1 on every token
    ref = LOGPS - 1.0
    with_kl, _ = grpo_loss(LOGPS, None, ref, advantages, MASK, loss_type="grpo", beta=0.1, sampler_weights=weights,
                           use_bias_correction_kl=False)
    assert with_kl.item() == pytest.approx(0.25 + 0.1 * E ** -1, rel=1e-6)
    # a sequence weight [B, 1] scales every token of its row
    seq, _ = grpo_loss(LOGPS, None, None, advantages, MASK, loss_type="grpo",
                       sampler_weights=torch.tensor([[0.5], [0.0]]))
    assert seq.item() == pytest.approx((-0.5 + 0.0) / 2)


def test_vespo_takes_the_sampler_weights_into_its_sequence_weight():
    # on-policy, so w is the product of the sampler weights: 1.5 * 0.5 * 1 = 0.75 for row 0 (A >= 0: k=2, lambda=3)
    weights = torch.tensor([[1.5, 0.5, 1.0], [1.0, 1.0, 1.0]])
    phi = vespo_weights(torch.zeros(2, 3), MASK.float(), torch.tensor([[1.0], [1.0]]), 2.0, 3.0, 3.0, 2.0, weights)
    assert phi[0, 0].item() == pytest.approx(E ** 3 * 0.75 ** 2 * E ** (-3 * 0.75), rel=1e-6)
    assert phi[1, 0].item() == pytest.approx(1.0)  # w = 1: phi(1) = 1
    # and the loss is not multiplied by them a second time: -phi * A * logp summed over the 5 tokens, divided by 5
    loss, metrics = grpo_loss(LOGPS, None, None, torch.tensor([1.0, 1.0]), MASK, loss_type="vespo",
                              sampler_weights=weights)
    assert metrics["vespo/phi_seq_mean"].item() == pytest.approx((phi[0, 0].item() + 1.0) / 2, rel=1e-6)
    assert loss.item() == pytest.approx((3.5 * phi[0, 0].item() + 2.0) / 5, rel=1e-6)


def test_off_policy_mask_uses_the_samplers_logprobs_when_given():
    # negative advantages; the drift (mean sampler - trainer log-prob) from old_logps (= logps) is 0, from this
    # sampler 0 on row 0 and (2 + 1) / 2 = 1.5 on row 1, above the threshold 1
    sampling = torch.tensor([[-1.0, -2.0, -0.5], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([-1.0, -1.0])
    kept, _ = grpo_loss(LOGPS, None, None, advantages, MASK, loss_type="grpo", off_policy_threshold=1.0)
    masked, _ = grpo_loss(LOGPS, None, None, advantages, MASK, loss_type="grpo", off_policy_threshold=1.0,
                          sampling_logps=sampling)
    assert kept.item() == pytest.approx(1.0)  # -A = 1 on every token of both rows
    assert masked.item() == pytest.approx(0.5)  # row 1 dropped


def test_config_modes_are_the_cores():
    assert config_checks.VLLM_IMPORTANCE_SAMPLING_MODES == SAMPLER_CORRECTION_MODES
