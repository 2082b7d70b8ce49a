"""The sampler/trainer mismatch: when another engine (vLLM) samples the completions, its log-probs differ from the
trainer's forward of the same weights (kernels, precision), so the samples come from a slightly different policy.
As TRL 1.16 (vllm_importance_sampling_correction), each token's policy loss is weighed by the importance ratio

    rho = pi_trainer(token) / pi_sampler(token) = exp(logp_trainer - logp_sampler)       per token      [B, T]
    rho = exp(sum over the completion's tokens of (logp_trainer - logp_sampler))        per sequence   [B, 1]

bounded to [C_min, C_max] by truncation (rho clipped: truncated importance sampling, Yao et al. 2025) or by masking
(a rho outside the bounds becomes 0, which takes the token or sequence out of the policy loss). Tokens outside the
mask, and tokens without a sampler log-prob (NaN), contribute a log-ratio of 0.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

SAMPLER_CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def sampler_importance_weights(logps: Tensor, sampling_logps: Tensor, mask: Tensor, mode: str = "sequence_mask",
                               clip_min: float | None = None, clip_max: float | None = 3.0) -> Tensor:
    """The bounded importance ratio pi_trainer / pi_sampler (no gradient): [B, T] for token_* modes, [B, 1] for
    sequence_* ones. logps: the trainer's log-probs of the sampled tokens [B, T]; sampling_logps: the sampler's
    [B, T]; mask [B, T] 1 on the tokens the loss uses."""
    if mode not in SAMPLER_CORRECTION_MODES:
        raise ValueError(f"mode must be one of {SAMPLER_CORRECTION_MODES}, got {mode!r}")
    log_ratio = torch.nan_to_num((logps.detach() - sampling_logps) * mask, nan=0.0)  # [B, T]
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True)  # [B, 1]
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def sampler_mismatch_metrics(logps: Tensor, sampling_logps: Tensor, mask: Tensor, weights: Tensor) -> dict[str, float]:
    """TRL's sampling/ metrics of a round: the mean and max |logp_trainer - logp_sampler| over the masked tokens that
    have a sampler log-prob, and the min, mean and max of the importance weights (over the masked tokens for token
    weights [B, T], over the sequences for sequence weights [B, 1])."""
    keep = mask.bool()
    delta = (logps - sampling_logps).abs()[keep & ~torch.isnan(sampling_logps)]
    flat = weights.flatten() if weights.size(-1) == 1 and mask.size(-1) != 1 else weights[keep]

    def stat(values: Tensor, reduce) -> float:
        return float(reduce(values)) if values.numel() else 0.0

    return {"sampling/sampling_logp_difference/mean": stat(delta, torch.mean),
            "sampling/sampling_logp_difference/max": stat(delta, torch.max),
            "sampling/importance_sampling_ratio/min": stat(flat, torch.min),
            "sampling/importance_sampling_ratio/mean": stat(flat, torch.mean),
            "sampling/importance_sampling_ratio/max": stat(flat, torch.max)}
