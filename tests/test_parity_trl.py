"""reasonrl's core maths equals TRL 1.16's GRPOTrainer, checked against TRL's own code running on a real model.

What this file proves (TRL 1.16.0, fp32 tiny random Qwen2 on CPU):

1. Loss, gradients and logged metrics. For one hand-built batch (equal-length prompts, right-padded completions
   of different lengths, mixed-sign advantages, old/reference log-probs perturbed so that ratios clip),
   `GRPOTrainer._compute_loss` + backward and reasonrl's plain forward -> `token_logprobs` -> `grpo_loss` + backward
   give the same loss and the same gradient on every parameter (atol 1e-5), and the same metrics TRL logs for the
   loss type (clip_ratio/{low,high,region}, cispo_clip_ratio, vespo/phi_seq_mean) and kl (atol 1e-6). This holds
   for every combination of loss_type (grpo, bnpo, dr_grpo, dapo), beta (0, 0.04), importance_sampling_level (token;
   sequence with grpo only), epsilon_high (None, 0.28) and with/without old log-probs; for cispo, sapo, luspo and
   vespo with beta (0, 0.04), both levels and with/without old log-probs; plus cases with delta, temperature != 1,
   use_bias_correction_kl, cispo's cap, sapo's temperatures and vespo's k and lambda.
2. Entropy masking (top_entropy_quantile < 1): the tokens reasonrl's `high_entropy_mask` keeps are exactly those
   TRL's `get_high_entropy_mask` keeps on TRL's own entropies, and loss and gradients match as in 1, for several
   quantiles and loss types.
3. Advantages. `GRPOTrainer._generate_and_score_completions` (real generation, reward functions returning fixed
   values, some None) gives the same advantages as `group_advantages` for scale_rewards group, batch and none, with
   one reward function and with two weighted ones.
4. Soft overlong punishment: reasonrl's built-in equals `trl.rewards.get_soft_overlong_punishment` on the same
   completion ids (hypothesis).

Every case gets its own GRPOTrainer built from its own GRPOConfig, so TRL itself turns the options into its
attributes (epsilon_high=None -> epsilon, the reference model, the fused LM head's temperature); a trainer costs
~50 ms. The tiny model is built once per module and saved, and each trainer loads it: the weights are identical in
every case, and TRL creates its reference model (beta > 0) from the checkpoint path in the model config.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import trl
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import get_soft_overlong_punishment

from reasonrl.core import group_advantages, grpo_loss, high_entropy_mask, token_logprobs
from reasonrl.rewards import get_reward, reward_name
from reasonrl.tiny import build_char_tokenizer, build_tiny_model

TRL_VERSION = "1.16."

# TRL's generation path calls a transformers API that transformers 5 deprecated; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# ------------------------------------------------------------------------------------------------ the batch

BATCH = 4  # per_device_train_batch_size: one micro-batch of 2 prompts x 2 generations
NUM_GENERATIONS = 2
PROMPT_LENGTH = 5  # every prompt this long: no left padding (TRL's training forward passes no position ids)
COMPLETION_LENGTHS = [6, 3, 5, 1]  # right-padded to 6 columns
MAX_COMPLETION_LENGTH = 8  # > padded width, so dr_grpo's constant denominator is not just the tensor width
ADVANTAGES = [1.0, -0.5, 0.7, -1.2]
# old log-probs = current log-probs + OLD_SHIFT (per sequence) + small per-token noise, so the ratio
# exp(logp - old) is ~exp(-OLD_SHIFT): sequence 0 (A > 0) clips high at 1 + 0.28, sequence 1 (A < 0) clips low at
# 0.8, and sequence 3 (A < 0) has ratios above delta = 1.5, where delta caps the unclipped branch.
OLD_SHIFT = [-0.35, 0.35, 0.0, -0.6]
OLD_NOISE = 0.1
REF_NOISE = 0.3  # reference log-probs = current + noise: a clearly non-zero KL
DELTA = 1.5
# cispo's cap on the importance weight: below sequence 0's ratio ~exp(0.35) = 1.42 (A > 0), so some tokens are capped
CISPO_CAP = 1.3

LOSS_ATOL = 1e-5
GRAD_ATOL = 1e-5
METRIC_ATOL = 1e-6


def test_trl_version():
    assert trl.__version__.startswith(TRL_VERSION), f"this parity suite targets TRL {TRL_VERSION}x"


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    """The tiny random Qwen2 (fp32), saved once; each trainer loads a fresh copy with identical weights."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_model(tokenizer, arch="qwen2", hidden_size=64, seed=0, dtype=torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def make_trainer(checkpoint, tokenizer, tmp_path_factory):
    """GRPOTrainer factory: base settings of this suite, overridden per case."""
    output_dir = tmp_path_factory.mktemp("grpo-out")
    dataset = Dataset.from_dict({"prompt": ["2+2=", "3*3=", "7-5=", "9/3="]})

    def constant_reward(completions, **kwargs):
        return [0.0] * len(completions)

    def make(reward_funcs=constant_reward, **overrides) -> GRPOTrainer:
        settings = {
            "output_dir": str(output_dir),
            "bf16": False,
            "use_cpu": True,
            "report_to": [],
            "gradient_accumulation_steps": 1,
            "per_device_train_batch_size": BATCH,
            "num_generations": NUM_GENERATIONS,
            # transformers 5 renamed gradient_checkpointing (TRL defaults it to True); set both so neither is on
            "gradient_checkpointing": False,
            "activation_checkpointing": False,
            "use_bias_correction_kl": False,  # TRL 1.16 defaults it to True
            "max_completion_length": MAX_COMPLETION_LENGTH,
        }
        settings.update(overrides)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=GRPOConfig(**settings),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.model.train()  # the training loop's mode: metrics go to _metrics["train"] (dropout is 0 anyway)
        return trainer

    return make


@pytest.fixture(scope="module")
def batch(tokenizer):
    """One micro-batch as `_generate_and_score_completions` would hand it to `_compute_loss`, minus the log-probs."""
    g = torch.Generator().manual_seed(1234)
    first_byte_id = len(tokenizer) - 256  # ids below are special tokens
    prompt_ids = torch.randint(first_byte_id, len(tokenizer), (BATCH, PROMPT_LENGTH), generator=g)
    width = max(COMPLETION_LENGTHS)
    completion_mask = (torch.arange(width) < torch.tensor(COMPLETION_LENGTHS)[:, None]).long()
    completion_ids = torch.randint(first_byte_id, len(tokenizer), (BATCH, width), generator=g)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor(ADVANTAGES),
        # TRL counts the generation batch's completion tokens; with one micro-batch per generation batch that is
        # this mask's token count, so dapo's normaliser is the batch's token count.
        "num_items_in_batch": completion_mask.sum(),
        "old_noise": torch.tensor(OLD_SHIFT)[:, None] + OLD_NOISE * torch.randn(BATCH, width, generator=g),
        "ref_noise": REF_NOISE * torch.randn(BATCH, width, generator=g),
    }


def completion_logits(model, batch) -> torch.Tensor:
    """Plain forward (no fused LM head): the logits that predict each completion token, [B, T, V]."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[:, PROMPT_LENGTH - 1 : -1]


# ------------------------------------------------------------------------------------------------ 1. loss parity


def _loss_cases():
    cases = []
    for loss_type, beta, level, epsilon_high, with_old in itertools.product(
        ("grpo", "bnpo", "dr_grpo", "dapo"), (0.0, 0.04), ("token", "sequence"), (None, 0.28), (False, True)
    ):
        if level == "sequence" and loss_type != "grpo":  # GSPO is defined with grpo's per-sequence mean
            continue
        config = {
            "loss_type": loss_type,
            "beta": beta,
            "importance_sampling_level": level,
            "epsilon_high": epsilon_high,
        }
        case_id = f"{loss_type}-beta{beta}-{level}-eps_high{epsilon_high}-{'old' if with_old else 'on_policy'}"
        cases.append(pytest.param(config, with_old, id=case_id))
    sequence = {"importance_sampling_level": "sequence"}
    extras = {  # all with old log-probs
        "grpo-delta": {"loss_type": "grpo", "beta": 0.04, "delta": DELTA},
        "grpo-sequence-delta": {"loss_type": "grpo", "beta": 0.04, "delta": DELTA, **sequence},
        "dapo-delta-eps_high": {"loss_type": "dapo", "beta": 0.04, "epsilon_high": 0.28, "delta": DELTA},
        "dapo-temperature0.7": {"loss_type": "dapo", "beta": 0.04, "temperature": 0.7},
        "grpo-temperature0.7": {"loss_type": "grpo", "beta": 0.0, "temperature": 0.7},
        "bnpo-bias_correction_kl": {"loss_type": "bnpo", "beta": 0.04, "use_bias_correction_kl": True},
        "grpo-sequence-bias_correction_kl": {
            "loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": True, **sequence
        },
        "dr_grpo-everything": {
            "loss_type": "dr_grpo", "beta": 0.04, "epsilon_high": 0.28, "delta": DELTA, "temperature": 0.7,
            "use_bias_correction_kl": True,
        },
    }
    cases += [pytest.param(config, True, id=case_id) for case_id, config in extras.items()]
    cases += _new_loss_type_cases()
    return cases


def _new_loss_type_cases():
    """cispo, sapo, luspo and vespo: both levels (TRL warns about some pairings but computes them), beta 0 / 0.04."""
    cases = []
    for loss_type, beta, level, with_old in itertools.product(
        ("cispo", "sapo", "luspo", "vespo"), (0.0, 0.04), ("token", "sequence"), (False, True)
    ):
        config = {"loss_type": loss_type, "beta": beta, "importance_sampling_level": level}
        case_id = f"{loss_type}-beta{beta}-{level}-{'old' if with_old else 'on_policy'}"
        cases.append(pytest.param(config, with_old, id=case_id))
    sequence = {"importance_sampling_level": "sequence"}
    extras = {  # all with old log-probs
        "cispo-cap": {"loss_type": "cispo", "beta": 0.04, "epsilon_high": CISPO_CAP},
        "cispo-sequence-cap": {"loss_type": "cispo", "beta": 0.0, "epsilon_high": CISPO_CAP, **sequence},
        "sapo-temperatures": {"loss_type": "sapo", "beta": 0.04, "sapo_temperature_pos": 0.5,
                              "sapo_temperature_neg": 2.0},
        "sapo-temperature0.7-bias_correction_kl": {"loss_type": "sapo", "beta": 0.04, "temperature": 0.7,
                                                   "use_bias_correction_kl": True},
        "luspo-sequence-delta-eps_high": {"loss_type": "luspo", "beta": 0.04, "epsilon_high": 0.28, "delta": DELTA,
                                          **sequence},
        "vespo-k-lambda": {"loss_type": "vespo", "beta": 0.04, "vespo_k_pos": 1.0, "vespo_lambda_pos": 0.5,
                           "vespo_k_neg": 0.5, "vespo_lambda_neg": 4.0},
        "vespo-sequence-bias_correction_kl": {"loss_type": "vespo", "beta": 0.04, "use_bias_correction_kl": True,
                                              **sequence},
    }
    cases += [pytest.param(config, True, id=case_id) for case_id, config in extras.items()]
    return cases


def _entropy_masking_cases():
    cases = []
    for case_id, config in {
        "dapo-q0.2": {"loss_type": "dapo", "beta": 0.04, "top_entropy_quantile": 0.2},
        "dapo-q0.5-eps_high": {"loss_type": "dapo", "beta": 0.0, "epsilon_high": 0.28, "top_entropy_quantile": 0.5},
        "dapo-q0.0": {"loss_type": "dapo", "beta": 0.04, "top_entropy_quantile": 0.0},
        "grpo-sequence-q0.2": {"loss_type": "grpo", "beta": 0.04, "importance_sampling_level": "sequence",
                               "top_entropy_quantile": 0.2},
        "bnpo-q0.3-temperature0.7": {"loss_type": "bnpo", "beta": 0.04, "temperature": 0.7,
                                     "top_entropy_quantile": 0.3},
        "dr_grpo-q0.8": {"loss_type": "dr_grpo", "beta": 0.0, "top_entropy_quantile": 0.8},
        "cispo-q0.2": {"loss_type": "cispo", "beta": 0.04, "epsilon_high": CISPO_CAP, "top_entropy_quantile": 0.2},
        "sapo-q0.2": {"loss_type": "sapo", "beta": 0.04, "top_entropy_quantile": 0.2},
        "luspo-sequence-q0.2": {"loss_type": "luspo", "beta": 0.04, "importance_sampling_level": "sequence",
                                "top_entropy_quantile": 0.2},
        "vespo-q0.2": {"loss_type": "vespo", "beta": 0.04, "top_entropy_quantile": 0.2},
    }.items():
        cases.append(pytest.param(config, True, id=case_id))
    cases.append(pytest.param({"loss_type": "dapo", "beta": 0.0, "top_entropy_quantile": 0.2}, False,
                              id="dapo-q0.2-on_policy"))
    return cases


# TRL's own metric names per loss type: what `_compute_loss` logs besides kl and entropy
CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
METRICS_BY_LOSS_TYPE = {"cispo": ("cispo_clip_ratio",), "sapo": (), "vespo": ("vespo/phi_seq_mean",)}


@pytest.mark.parametrize(("config", "with_old"), _loss_cases() + _entropy_masking_cases())
def test_loss_gradients_and_metrics_match_trl(config, with_old, make_trainer, batch):
    trainer = make_trainer(**config)
    model, args = trainer.model, trainer.args

    # TRL divides grpo/bnpo/dr_grpo by current_gradient_accumulation_steps and rescales dapo's num_items_in_batch by
    # current_gradient_accumulation_steps / steps_per_generation / num_processes. All are 1 here, so both sides see
    # the plain per-micro-batch loss. Trainer only sets current_gradient_accumulation_steps inside its training loop
    # (to the micro-batch count of the accumulation window), so set the value that loop would use.
    assert args.gradient_accumulation_steps == 1 and args.steps_per_generation == 1
    assert trainer.accelerator.num_processes == 1
    trainer.current_gradient_accumulation_steps = 1
    assert model.training and not args.gradient_checkpointing

    mask = batch["completion_mask"]
    with torch.no_grad():  # current log-probs, computed independently of reasonrl, to perturb into old/ref
        logits = completion_logits(model, batch).float() / args.temperature
        current = logits.log_softmax(-1).gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    # TRL stores 0 at padded positions of its log-prob tensors (the fused head masks them); do the same
    old_logps = ((current + batch["old_noise"]) * mask) if with_old else None
    ref_logps = ((current + batch["ref_noise"]) * mask) if args.beta != 0.0 else None

    inputs = {key: batch[key] for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
    inputs.update(advantages=batch["advantages"], num_items_in_batch=batch["num_items_in_batch"])
    if old_logps is not None:
        inputs["old_per_token_logps"] = old_logps
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = ref_logps

    # TRL: its own loss (fused LM head, its temperature, its normalisers), then backward
    model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}

    # reasonrl: plain forward -> token_logprobs -> grpo_loss, same model, same inputs
    model.zero_grad(set_to_none=True)
    logps, entropies = token_logprobs(completion_logits(model, batch), batch["completion_ids"],
                                      temperature=args.temperature, with_entropy=True)
    entropy_mask = None
    if args.top_entropy_quantile < 1.0:
        entropy_mask = high_entropy_mask(entropies, mask, args.top_entropy_quantile)
        # the same tokens as TRL's own mask on TRL's own entropies (fused LM head)
        with torch.no_grad():
            input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            attention_mask = torch.cat([batch["prompt_mask"], mask], dim=1)
            _, trl_entropies, _ = trainer._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, mask.size(1), compute_entropy=True)
        torch.testing.assert_close(entropies * mask, trl_entropies * mask, atol=1e-5, rtol=0)
        assert torch.equal(entropy_mask, trainer.get_high_entropy_mask(trl_entropies, mask,
                                                                        1 - args.top_entropy_quantile))
        assert 0 < entropy_mask.sum() < mask.sum()  # it really drops tokens (q = 0 keeps the single highest one)
    options = {
        "loss_type": args.loss_type,
        "epsilon": args.epsilon,
        "epsilon_high": args.epsilon_high,
        "beta": args.beta,
        "importance_sampling_level": args.importance_sampling_level,
        "max_completion_length": args.max_completion_length,
        "delta": args.delta,
        "num_items": batch["num_items_in_batch"],
        "use_bias_correction_kl": args.use_bias_correction_kl,
        "sapo_temperature_pos": args.sapo_temperature_pos,
        "sapo_temperature_neg": args.sapo_temperature_neg,
        "vespo_k_pos": args.vespo_k_pos,
        "vespo_lambda_pos": args.vespo_lambda_pos,
        "vespo_k_neg": args.vespo_k_neg,
        "vespo_lambda_neg": args.vespo_lambda_neg,
    }
    loss, metrics = grpo_loss(logps, old_logps, ref_logps, batch["advantages"], mask, entropy_mask=entropy_mask,
                              **options)
    loss.backward()

    torch.testing.assert_close(loss.detach(), trl_loss.detach(), atol=LOSS_ATOL, rtol=0)
    for name, param in model.named_parameters():
        assert param.grad is not None and trl_grads[name] is not None, name
        torch.testing.assert_close(
            param.grad, trl_grads[name], atol=GRAD_ATOL, rtol=0, msg=lambda message, name=name: f"{name}: {message}"
        )

    metric_keys = METRICS_BY_LOSS_TYPE.get(args.loss_type, CLIP_METRICS)
    assert set(metrics) == {"kl", *metric_keys}
    assert set(trl_metrics) - {"kl", "entropy"} >= set(metric_keys)
    for key in metric_keys:
        assert metrics[key].item() == pytest.approx(trl_metrics[key], abs=METRIC_ATOL), key
    if args.beta != 0.0:
        assert metrics["kl"].item() == pytest.approx(trl_metrics["kl"], abs=METRIC_ATOL)
        assert trl_metrics["kl"] > 1e-3  # the KL term is really exercised
    else:
        assert "kl" not in trl_metrics and metrics["kl"].item() == 0.0

    # The batch really exercises the clipping branches (and delta, cispo's cap, vespo's weight, where they apply)
    if with_old:
        if metric_keys == CLIP_METRICS:
            assert trl_metrics["clip_ratio/low_mean"] > 0 and trl_metrics["clip_ratio/high_mean"] > 0
        if args.loss_type == "cispo":
            assert trl_metrics["cispo_clip_ratio"] > 0
        if args.loss_type == "vespo":
            assert abs(trl_metrics["vespo/phi_seq_mean"] - 1.0) > 0.05  # phi(1) = 1 on-policy
        if args.delta is not None:
            ratio = torch.exp(current - old_logps)
            negative = batch["advantages"][:, None] < 0
            assert ((ratio > args.delta) & negative & mask.bool()).any()
    elif args.loss_type == "vespo":
        assert trl_metrics["vespo/phi_seq_mean"] == pytest.approx(1.0, abs=1e-6)
    if entropy_mask is not None:  # and the mask changes the loss
        unmasked, _ = grpo_loss(logps.detach(), old_logps, ref_logps, batch["advantages"], mask, **options)
        assert abs(unmasked.item() - loss.item()) > 1e-4


# ------------------------------------------------------------------------------------------------ 3. advantages

GROUP_SIZE = 4
PROMPTS = ["1+1=", "2+2=", "3+3=", "4+4=", "5+5="]
# Rewards per completion, num_generations=4 consecutive completions per prompt.
REWARDS_A = [
    1.0, None, 0.5, 2.0,  # mixed, one unscorable
    None, None, None, None,  # every reward None
    None, 3.0, None, None,  # one scorable value: std undefined
    None, 0.0, 1.0, -1.0,  # A cannot score row 0 (B can, when both are used)
    1.0, 1.0, 1.0, 1.0,  # zero std
]
REWARDS_B = [
    0.0, None, 1.0, None,
    None, None, None, None,
    None, -1.0, None, None,
    2.0, 2.0, None, 0.0,
    None, None, None, None,
]
WEIGHTS = [1.0, 0.5]


def fixed_reward(name: str, values: list, calls: list):
    """A reward function returning predetermined values: TRL passes the rows in order, in one call per batch."""

    def reward(prompts, completions, **kwargs):
        calls.append(len(completions))
        return list(values)

    reward.__name__ = name
    return reward


def combined_rewards(per_function: list[list], weights: list[float]) -> torch.Tensor:
    """One reward per completion, as TRL's default multi_objective_aggregation="sum_then_normalize" forms it.

    None becomes NaN; the weighted rewards are summed ignoring NaN (nansum); a completion is unscorable (NaN) only
    when every reward function returned None for it.
    """
    table = torch.tensor([[math.nan if v is None else v for v in values] for values in per_function]).T  # [N, F]
    rewards = (table * torch.tensor(weights)).nansum(dim=1)
    rewards[torch.isnan(table).all(dim=1)] = math.nan
    return rewards


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("weighted_pair", [False, True], ids=["one_function", "two_weighted_functions"])
def test_advantages_match_trl(scale, weighted_pair, make_trainer):
    per_function = [REWARDS_A, REWARDS_B] if weighted_pair else [REWARDS_A]
    weights = WEIGHTS if weighted_pair else [1.0]
    calls: list[int] = []
    reward_funcs = [fixed_reward(f"fixed_{i}", values, calls) for i, values in enumerate(per_function)]
    num_rows = len(PROMPTS) * GROUP_SIZE
    trainer = make_trainer(
        reward_funcs=reward_funcs,
        reward_weights=weights if weighted_pair else None,
        scale_rewards=scale,
        num_generations=GROUP_SIZE,
        per_device_train_batch_size=num_rows,  # one generation batch = every prompt's group
        max_completion_length=4,
    )
    # The rows the training dataloader's sampler yields: each prompt repeated num_generations times, consecutively
    rows = [{"prompt": prompt} for prompt in PROMPTS for _ in range(GROUP_SIZE)]
    output = trainer._generate_and_score_completions(rows)
    assert calls == [num_rows] * len(reward_funcs)  # each function scored every row once, in order

    expected = group_advantages(combined_rewards(per_function, weights), GROUP_SIZE, scale=scale)
    torch.testing.assert_close(output["advantages"].float(), expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ 4. soft overlong


@settings(max_examples=200, deadline=None)
@given(max_len=st.integers(1, 40), data=st.data())
def test_soft_overlong_punishment_equals_trl(max_len, data):
    cache = data.draw(st.integers(0, max_len))
    lengths = data.draw(st.lists(st.integers(0, 2 * max_len + 2), min_size=1, max_size=12))
    completion_ids = [[7] * length for length in lengths]
    theirs = get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache)
    ours = get_reward("soft_overlong_punishment", max_completion_len=max_len, soft_punish_cache=cache)
    # TRL's calling convention: everything by keyword
    assert ours(prompts=["p"] * len(lengths), completions=["c"] * len(lengths), completion_ids=completion_ids) == (
        theirs(completion_ids=completion_ids))
    assert reward_name(ours) == theirs.__name__  # logged as rewards/soft_overlong_punishment_reward/mean in both
