"""Pure tensor maths of GRPO: tensors in, tensors out. No model, tokenizer, file or network."""

from reasonrl.core.advantages import group_advantages, nanstd, normalized_sum_advantages
from reasonrl.core.dropout import dropout
from reasonrl.core.logprobs import token_entropy, token_logprobs
from reasonrl.core.losses import (
    LOSS_TYPES,
    MICRO_BATCH_TOKENS,
    ROWS,
    WINDOW_TOKENS,
    StepNormaliser,
    chunk_weight,
    entropy_bonus,
    grpo_loss,
    high_entropy_mask,
    k3_kl,
    masked_mean,
    micro_batch_divisors,
    normalised_by,
    off_policy_mask,
    sequence_metrics,
)
from reasonrl.core.sampler_correction import (
    SAMPLER_CORRECTION_MODES,
    sampler_importance_weights,
    sampler_mismatch_metrics,
)

__all__ = [
    "LOSS_TYPES",
    "MICRO_BATCH_TOKENS",
    "ROWS",
    "SAMPLER_CORRECTION_MODES",
    "WINDOW_TOKENS",
    "StepNormaliser",
    "chunk_weight",
    "dropout",
    "entropy_bonus",
    "group_advantages",
    "grpo_loss",
    "high_entropy_mask",
    "k3_kl",
    "masked_mean",
    "micro_batch_divisors",
    "nanstd",
    "normalised_by",
    "normalized_sum_advantages",
    "off_policy_mask",
    "sampler_importance_weights",
    "sampler_mismatch_metrics",
    "sequence_metrics",
    "token_entropy",
    "token_logprobs",
]
