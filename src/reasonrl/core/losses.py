"""The GRPO-family policy loss: PPO-clipped surrogate + k3 KL penalty, with TRL's aggregations.

Per token t of completion i (all tensors [B, T] unless said):

    ratio      r = exp(logp - old_logp)            (GSPO, sequence level: exp of the masked mean log-ratio, [B, 1])
    surrogate  -min(r * A_i, clip(r, 1 - eps_low, 1 + eps_high) * A_i)     (r capped at `delta` first, if set)
    KL         exp(ref - logp) - (ref - logp) - 1  (Schulman's k3 estimator; unbiased, always >= 0)
    per-token  surrogate + beta * KL

and the per-token losses are reduced to one number by `loss_type` (see `_AGGREGATIONS`).
"""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 estimate of KL(policy || reference) per token: exp(ref - logp) - (ref - logp) - 1."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


def _seq_mean_then_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # grpo: every sequence weighs the same, whatever its length (the original GRPO paper)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _batch_token_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # bnpo: every token of this batch weighs the same
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _constant_normaliser(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # dr_grpo: a constant denominator, so no length bias at all (Dr. GRPO, arXiv 2503.20783)
    return (per_token * mask).sum() / (per_token.size(0) * max_len)


def _global_token_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # dapo: every token of the whole optimizer step weighs the same; the trainer passes the token count over the
    # accumulation window and all processes as num_items, so the result is independent of how the step is split.
    denominator = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
    return (per_token * mask).sum() / denominator.clamp(min=1.0)


_AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "grpo": _seq_mean_then_mean,
    "bnpo": _batch_token_mean,
    "dr_grpo": _constant_normaliser,
    "dapo": _global_token_mean,
}
LOSS_TYPES = tuple(_AGGREGATIONS)
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def chunk_weight(loss_type: str, chunk_mask: Tensor, mask: Tensor, num_items: Tensor | float | None = None) -> Tensor:
    """w such that sum over chunks of w * grpo_loss(chunk) == grpo_loss(all rows), when a micro-batch's rows
    (mask [B, T]) are split into chunks (chunk_mask [b, T]): each aggregation is a sum over rows divided by a
    normaliser that depends on the masks only, so a chunk's loss is rescaled by its share of that normaliser."""
    if loss_type in ("grpo", "dr_grpo"):  # divided by the number of rows
        return torch.tensor(chunk_mask.size(0) / mask.size(0))
    if loss_type == "dapo" and num_items is not None:  # divided by a given token count, the same for every chunk
        return torch.tensor(1.0)
    return chunk_mask.sum().float() / mask.sum().float().clamp(min=1.0)  # bnpo (dapo alone): by the token count


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over completion tokens; for per-sequence values [B, 1], the mean over sequences (as TRL logs it)."""
    if values.shape[-1] == 1:
        return values.float().mean()
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    delta: float | None = None,
    num_items: Tensor | float | None = None,
    use_bias_correction_kl: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss of one micro-batch and its metrics.

    logps [B, T] (with grad), old_logps [B, T] or None (on-policy: logps.detach()), ref_logps [B, T] (needed when
    beta > 0), advantages [B], mask [B, T] (1 on completion tokens). `use_bias_correction_kl` multiplies the KL by
    the importance ratio (TRL's option of that name); off gives the classic k3 penalty.
    Returns (loss, metrics) where metrics holds detached scalars: kl, clip_ratio/{low,high,region}_mean.
    """
    if loss_type not in _AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {importance_sampling_level!r}"
        )
    if beta != 0.0 and ref_logps is None:
        raise ValueError("ref_logps is required when beta != 0 (the KL penalty needs the reference log-probs)")
    mask = mask.to(logps.dtype)
    if old_logps is None:
        old_logps = logps.detach()
    epsilon_low = epsilon
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    advantages = advantages.reshape(-1, 1).to(logps.dtype)  # [B, 1]

    log_ratio = logps - old_logps  # [B, T]
    if importance_sampling_level == "token":
        log_importance = log_ratio  # [B, T]
    else:  # GSPO: one ratio per sequence, the geometric mean of its token ratios
        log_importance = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    ratio = torch.exp(log_importance)

    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    # delta caps the unclipped branch too, so a huge ratio with a negative advantage cannot blow up the loss
    capped_ratio = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_token_loss = -torch.min(capped_ratio * advantages, clipped_ratio * advantages)  # [B, T] or [B, 1]

    metrics: dict[str, Tensor] = {}
    if beta != 0.0:
        per_token_kl = k3_kl(logps, ref_logps)  # [B, T]
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * ratio
        per_token_loss = per_token_loss + beta * per_token_kl
        metrics["kl"] = masked_mean(per_token_kl.detach(), mask)
    else:
        metrics["kl"] = torch.zeros((), dtype=logps.dtype)
    per_token_loss = per_token_loss.expand_as(mask)

    max_len = max_completion_length if max_completion_length is not None else mask.size(1)
    loss = _AGGREGATIONS[loss_type](per_token_loss, mask, max_len, num_items)

    with torch.no_grad():
        low = ((capped_ratio < 1 - epsilon_low) & (advantages < 0)).to(logps.dtype)
        high = ((capped_ratio > 1 + epsilon_high) & (advantages > 0)).to(logps.dtype)
        metrics["clip_ratio/low_mean"] = masked_mean(low, mask)
        metrics["clip_ratio/high_mean"] = masked_mean(high, mask)
        metrics["clip_ratio/region_mean"] = masked_mean(torch.maximum(low, high), mask)
    return loss, metrics
