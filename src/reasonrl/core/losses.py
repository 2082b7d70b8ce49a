"""The GRPO-family policy loss with TRL 1.16's eight loss types: a per-token policy term, a k3 KL penalty, one
aggregation per loss type.

Per token t of completion i (all tensors [B, T] unless said), with r = exp(logp - old_logp) (at sequence level,
GSPO: exp of the masked mean log-ratio, [B, 1]) and advantage A_i:

    grpo, bnpo, dr_grpo, dapo, luspo   -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)   (r capped at delta first)
    cispo                              -sg(min(r, epsilon_high)) * A * logp      (MiniMax-M1: the weight is clipped,
                                                                                  no token leaves the gradient)
    sapo                               -A * 4 / tau * sigmoid(tau * (r - 1))     (SAPO: a soft gate, tau by sign(A))
    vespo                              -sg(phi(w_i)) * A * logp                  (VESPO: w_i the sequence's product
                                                                                  of token ratios, phi a Gamma shape)
    KL                                 exp(ref - logp) - (ref - logp) - 1         (Schulman's k3; times r with
                                                                                  use_bias_correction_kl)
    per-token loss                     policy term (times the entropy mask, if any) + beta * KL

and the per-token losses are reduced to one number by the loss type's aggregation (`_LOSS_TYPES`, the one place
that says how each loss type is normalised; `StepNormaliser` turns it into the scale of each piece of an optimizer
step: micro-batches, row chunks, processes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

# What a loss type divides its sum of per-token losses by, as far as splitting a step into pieces is concerned:
ROWS = "rows"  # the number of sequences (grpo, sapo, luspo; dr_grpo's rows * max_completion_length)
MICRO_BATCH_TOKENS = "micro_batch_tokens"  # the micro-batch's loss tokens (bnpo)
WINDOW_TOKENS = "window_tokens"  # the loss tokens of the whole optimizer step, passed in as num_items (dapo, ...)


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 estimate of KL(policy || reference) per token: exp(ref - logp) - (ref - logp) - 1."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


# ------------------------------------------------------------------ policy terms: per-token losses, [B, T] or [B, 1]


def clipped_surrogate(ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float,
                      delta: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO's pessimistic clipped objective. ratio [B, T] or [B, 1], advantages [B, 1].

    Returns (per-token loss, the ratio after delta's cap); delta caps the unclipped branch too (INTELLECT-2), so a
    huge ratio with a negative advantage cannot blow up the loss."""
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    capped_ratio = ratio if delta is None else torch.clamp(ratio, max=delta)
    return -torch.min(capped_ratio * advantages, clipped_ratio * advantages), capped_ratio


def cispo_surrogate(logps: Tensor, ratio: Tensor, advantages: Tensor, cap: float) -> Tensor:
    """CISPO (MiniMax-M1): REINFORCE weighted by the importance ratio capped at `cap` and detached, so the gradient
    is min(r, cap) * A * grad logp on every token (PPO's clip would zero it on clipped tokens).
    logps [B, T], ratio [B, T] or [B, 1], advantages [B, 1] -> [B, T]."""
    return -torch.clamp(ratio, max=cap).detach() * advantages * logps


def sapo_surrogate(ratio: Tensor, advantages: Tensor, temperature_pos: float, temperature_neg: float) -> Tensor:
    """SAPO: a smooth gate in place of the hard clip, -A * 4 / tau * sigmoid(tau * (r - 1)), tau = temperature_pos
    where A > 0 else temperature_neg. Its gradient at r = 1 is PPO's (-A grad r) and fades as r leaves 1.
    ratio [B, T] or [B, 1], advantages [B, 1] -> same shape as ratio."""
    temperatures = torch.where(advantages > 0, temperature_pos, temperature_neg)  # [B, 1]
    return -torch.sigmoid(temperatures * (ratio - 1)) * 4 / temperatures * advantages


_LOG_MIN_WEIGHT = math.log(1e-8)  # TRL's lower clamp of VESPO's log weight


@torch.no_grad()
def vespo_weights(log_ratio: Tensor, mask: Tensor, advantages: Tensor, k_pos: float, lambda_pos: float,
                  k_neg: float, lambda_neg: float, sampler_weights: Tensor | None = None) -> Tensor:
    """VESPO's per-sequence weight phi(w) = exp(lambda) * w^k * exp(-lambda * w) (so phi(1) = 1), computed in log
    space and without gradient. w is the sequence's importance weight, the product of its token ratios (the sum of
    the token log-ratios, each clamped to +-20, the sum to [log 1e-8, 20]); (k, lambda) are (k_pos, lambda_pos)
    where A >= 0, else (k_neg, lambda_neg), lambda at least 1e-4. A non-finite phi is 0.
    With `sampler_weights` [B, T] (token importance ratios pi_old / pi_sampler, core.sampler_importance_weights),
    w also carries their product, each log clamped to [log 1e-8, 20], as TRL: w = pi / pi_sampler.
    log_ratio [B, T], mask [B, T], advantages [B, 1] -> [B, 1]."""
    log_ratio = torch.clamp(log_ratio, -20.0, 20.0)
    log_weight = (log_ratio * mask).sum(-1, keepdim=True)  # [B, 1]
    if sampler_weights is not None:
        log_weight = log_weight + torch.clamp(torch.log(sampler_weights), _LOG_MIN_WEIGHT, 20.0).sum(-1, keepdim=True)
    log_weight = torch.clamp(log_weight, _LOG_MIN_WEIGHT, 20.0)
    non_negative = advantages >= 0
    k = torch.where(non_negative, k_pos, k_neg)
    lam = torch.where(non_negative, lambda_pos, lambda_neg).clamp(min=1e-4)
    log_phi = lam + k * log_weight - lam * torch.exp(log_weight)
    return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


# ------------------------------------------------------------------ aggregations: per-token losses -> one number


def _seq_mean_then_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # grpo, sapo: every sequence weighs the same, whatever its length (the original GRPO paper)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _batch_token_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # bnpo: every token of this batch weighs the same
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _constant_normaliser(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # dr_grpo: a constant denominator, so no length bias at all (Dr. GRPO, arXiv 2503.20783)
    return (per_token * mask).sum() / (per_token.size(0) * max_len)


def _global_token_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # dapo, cispo, vespo: every token of the whole optimizer step weighs the same; the trainer passes the token count
    # over the accumulation window and all processes as num_items, so the result is independent of how the step is
    # split.
    denominator = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
    return (per_token * mask).sum() / denominator.clamp(min=1.0)


def _seq_sum_then_mean(per_token: Tensor, mask: Tensor, max_len: int, num_items: Tensor | None) -> Tensor:
    # luspo: each sequence's loss is its token sum, i.e. GSPO's per-sequence loss scaled by its length (LUSPO)
    return (per_token * mask).sum(-1).mean()


@dataclass(frozen=True)
class _LossType:
    policy: str  # which policy term: "clipped", "cispo", "sapo" or "vespo"
    aggregate: Callable[..., Tensor]
    normaliser: str  # ROWS, MICRO_BATCH_TOKENS or WINDOW_TOKENS


_LOSS_TYPES: dict[str, _LossType] = {
    "grpo": _LossType("clipped", _seq_mean_then_mean, ROWS),
    "bnpo": _LossType("clipped", _batch_token_mean, MICRO_BATCH_TOKENS),
    "dr_grpo": _LossType("clipped", _constant_normaliser, ROWS),
    "dapo": _LossType("clipped", _global_token_mean, WINDOW_TOKENS),
    "cispo": _LossType("cispo", _global_token_mean, WINDOW_TOKENS),
    "sapo": _LossType("sapo", _seq_mean_then_mean, ROWS),
    "luspo": _LossType("clipped", _seq_sum_then_mean, ROWS),
    "vespo": _LossType("vespo", _global_token_mean, WINDOW_TOKENS),
}
LOSS_TYPES = tuple(_LOSS_TYPES)
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
_RATIO_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "cispo_clip_ratio")


def sequence_metrics(importance_sampling_level: str) -> frozenset[str]:
    """The grpo_loss metrics that are means over sequences, not tokens: vespo's weight always, the ratio-based
    ones at sequence level (one ratio per sequence). Combining chunks' metrics weighs these by rows."""
    ratio_metrics = _RATIO_METRICS if importance_sampling_level == "sequence" else ()
    return frozenset({"vespo/phi_seq_mean", *ratio_metrics})


# ------------------------------------------------------------------ normalisers: one optimizer step in pieces
# An optimizer step's loss is a sum over its micro-batches (and, inside one, over row chunks) of grpo_loss(piece)
# times a scale. The scale is each loss type's normaliser: rows (grpo, sapo, luspo, dr_grpo), the micro-batch's
# tokens (bnpo), the step's tokens over all processes (dapo, cispo, vespo); across processes DDP averages gradients.


def normalised_by(loss_type: str) -> str:
    """What `loss_type` divides its sum of per-token losses by: ROWS, MICRO_BATCH_TOKENS or WINDOW_TOKENS."""
    return _LOSS_TYPES[loss_type].normaliser


def chunk_weight(loss_type: str, chunk_mask: Tensor, mask: Tensor, num_items: Tensor | float | None = None) -> Tensor:
    """w such that sum over chunks of w * grpo_loss(chunk) == grpo_loss(all rows), when a micro-batch's rows
    (mask [B, T]) are split into chunks (chunk_mask [b, T]): each aggregation is a sum over rows divided by a
    normaliser that depends on the masks only, so a chunk's loss is rescaled by its share of that normaliser.
    (Holds for the loss given the same per-row inputs; an entropy mask must come from the whole micro-batch.)"""
    normaliser = normalised_by(loss_type)
    if normaliser == ROWS:
        return torch.tensor(chunk_mask.size(0) / mask.size(0))
    if normaliser == WINDOW_TOKENS and num_items is not None:  # a given token count, the same for every chunk
        return torch.tensor(1.0)
    return chunk_mask.sum().float() / mask.sum().float().clamp(min=1.0)  # by the micro-batch's token count


def micro_batch_divisors(loss_type: str, local_tokens: Tensor, global_tokens: Tensor, world_size: int) -> list[float]:
    """What each micro-batch's loss (not one normalised by the window's tokens: dapo, cispo, vespo) is divided
    by, so that DDP's mean over W processes of the gradients equals one process's gradient on the global
    micro-batches (each process's b rows together). local_tokens, global_tokens [window size]: loss tokens of the
    step's micro-batches on this process and summed over processes.

    Loss types normalised by rows (grpo, sapo, luspo, dr_grpo's rows * max_completion_length): loss / window
    size, averaged over equal-sized shards, is already the global value. bnpo averages over the micro-batch's
    tokens: W processes' local averages are reweighted to the token mean of their union, loss_r * W * n_r / N
    (n_r local, N global tokens).
    """
    window_size = local_tokens.numel()
    if normalised_by(loss_type) != MICRO_BATCH_TOKENS or world_size <= 1:
        return [float(window_size)] * window_size
    return [window_size * float(total) / (world_size * float(local)) if local > 0 else float(window_size)
            for local, total in zip(local_tokens.tolist(), global_tokens.tolist())]


@dataclass(frozen=True)
class StepNormaliser:
    """The normalisers of one optimizer step (a window of micro-batches): `num_items` is grpo_loss's token count
    for the loss types normalised by the window's tokens; `scaled(loss, i, ...)` is the loss of micro-batch i (or
    of one of its row chunks) times its share of the step, so that the backwards add up to the gradient of the
    whole window's loss, on one process or averaged by DDP over several."""

    loss_type: str
    num_items: Tensor  # the window's loss tokens over all processes / world size (DDP then averages over ranks)
    divisors: list[float]  # per micro-batch (micro_batch_divisors)

    @classmethod
    def of_window(cls, loss_type: str, local_tokens: Tensor, global_tokens: Tensor, world_size: int):
        """local_tokens, global_tokens float64 [window size]: each micro-batch's loss tokens here and summed over
        the processes (the caller all-reduces)."""
        num_items = (global_tokens.sum() / world_size).float()
        return cls(loss_type, num_items, micro_batch_divisors(loss_type, local_tokens, global_tokens, world_size))

    def scaled(self, loss: Tensor, index: int, chunk_mask: Tensor, mask: Tensor) -> Tensor:
        """grpo_loss of a row chunk (chunk_mask [b, T]) of micro-batch `index` (mask [B, T]), scaled to its share
        of the step's loss: the chunks' and micro-batches' backwards then add up to the step's gradient."""
        # dapo, cispo and vespo are already normalised by the window's token count; the others average over it
        window_scale = 1.0 if normalised_by(self.loss_type) == WINDOW_TOKENS else 1.0 / self.divisors[index]
        return loss * chunk_weight(self.loss_type, chunk_mask, mask, self.num_items) * window_scale


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over completion tokens; for per-sequence values [B, 1], the mean over sequences (as TRL logs it)."""
    if values.shape[-1] == 1:
        return values.float().mean()
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def high_entropy_mask(entropies: Tensor, mask: Tensor, top_entropy_quantile: float,
                      pool: Tensor | None = None) -> Tensor:
    """The tokens the policy loss keeps under entropy masking ("Beyond the 80/20 Rule", TRL's
    top_entropy_quantile): those whose entropy is at least the (1 - top_entropy_quantile) quantile (torch.quantile,
    linear interpolation) of the loss tokens' entropies. entropies [B, T], mask [B, T] -> bool [B, T].

    `pool` is the 1-D tensor of entropies the quantile is taken over; by default this batch's loss tokens (TRL
    takes it over one micro-batch, gathered from every process). No loss token: nothing is kept."""
    keep = mask.bool()
    pool = entropies[keep].float() if pool is None else pool.float()
    if pool.numel() == 0:
        return torch.zeros_like(keep)
    threshold = torch.quantile(pool, 1 - top_entropy_quantile)
    return (entropies >= threshold) & keep


def entropy_bonus(entropy: Tensor, mask: Tensor, micro_batch_tokens: Tensor | float, micro_batches: int) -> Tensor:
    """The entropy term of a row chunk (entropy_coef): its share of the micro-batch's mean per-token entropy over
    the tokens the policy loss uses (`micro_batch_tokens` of them in the micro-batch), divided by the step's
    micro-batches as the loss is, so that the chunks and micro-batches add up to the step's mean entropy H. The
    same for every loss_type (TRL: L = L_policy - entropy_coef * H). entropy and mask [b, T] -> scalar."""
    return (entropy * mask).sum() / torch.as_tensor(micro_batch_tokens).clamp(min=1.0) / micro_batches


def off_policy_mask(advantages: Tensor, logps: Tensor, sampling_logps: Tensor, mask: Tensor,
                    threshold: float) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (TRL's off_policy_mask_threshold): a sequence is dropped from the
    loss when its advantage is negative and the policy has drifted from the one that sampled it by more than
    `threshold`, the drift being the mean over its tokens of log pi_sampling - log pi (a k1 estimate of
    KL(pi_sampling || pi)). advantages [B] or [B, 1], logps and sampling_logps [B, T], mask [B, T] -> [B, 1] in
    mask's dtype, 1 = kept. Tokens without a sampling log-prob (NaN) add no drift."""
    drift = torch.nan_to_num(sampling_logps - logps.detach(), nan=0.0) * mask  # [B, T]
    mean_drift = drift.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    keep = (advantages.reshape(-1, 1) >= 0) | (mean_drift <= threshold)
    return keep.to(mask.dtype)


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
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    entropy_mask: Tensor | None = None,
    off_policy_threshold: float | None = None,
    sampler_weights: Tensor | None = None,
    sampling_logps: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss of one micro-batch and its metrics, for any of TRL 1.16's loss types (`LOSS_TYPES`).

    logps [B, T] (with grad), old_logps [B, T] or None (on-policy: logps.detach()), ref_logps [B, T] (needed when
    beta > 0), advantages [B], mask [B, T] (1 on completion tokens). `use_bias_correction_kl` multiplies the KL by
    the importance ratio (TRL's option of that name); off gives the classic k3 penalty. epsilon_high (None: epsilon)
    is also cispo's cap on the importance weight; delta applies to the clipped loss types only. `entropy_mask`
    [B, T] (see high_entropy_mask) keeps the policy term on its tokens only; the KL term and the normaliser still
    count every token of `mask`, as in TRL. `off_policy_threshold` (TRL's off_policy_mask_threshold) drops from the
    policy term the sequences off_policy_mask drops (old_logps stand for the sampling policy's, unless
    `sampling_logps` [B, T], another engine's, are given). `sampler_weights` ([B, T] or [B, 1], from
    core.sampler_importance_weights: TRL's vllm_importance_sampling_correction) multiply the policy term; vespo takes
    them into its sequence weight instead.
    Returns (loss, metrics) where metrics holds detached scalars: kl, and per loss type what TRL logs:
    clip_ratio/{low,high,region}_mean (grpo, bnpo, dr_grpo, dapo, luspo), cispo_clip_ratio, vespo/phi_seq_mean.
    """
    if loss_type not in _LOSS_TYPES:
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

    metrics: dict[str, Tensor] = {}
    policy = _LOSS_TYPES[loss_type].policy
    if policy == "clipped":
        per_token_loss, capped_ratio = clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high, delta)
        with torch.no_grad():
            low = ((capped_ratio < 1 - epsilon_low) & (advantages < 0)).to(logps.dtype)
            high = ((capped_ratio > 1 + epsilon_high) & (advantages > 0)).to(logps.dtype)
            metrics["clip_ratio/low_mean"] = masked_mean(low, mask)
            metrics["clip_ratio/high_mean"] = masked_mean(high, mask)
            metrics["clip_ratio/region_mean"] = masked_mean(torch.maximum(low, high), mask)
    elif policy == "cispo":
        per_token_loss = cispo_surrogate(logps, ratio, advantages, epsilon_high)  # [B, T]
        capped = ((ratio.detach() > epsilon_high) & (advantages > 0)).to(logps.dtype)
        metrics["cispo_clip_ratio"] = masked_mean(capped, mask)
    elif policy == "sapo":
        per_token_loss = sapo_surrogate(ratio, advantages, sapo_temperature_pos, sapo_temperature_neg)
    else:  # vespo: its own sequence weight from the token log-ratios, whatever importance_sampling_level says
        phi = vespo_weights(log_ratio, mask, advantages, vespo_k_pos, vespo_lambda_pos, vespo_k_neg,
                            vespo_lambda_neg, sampler_weights)  # [B, 1]
        per_token_loss = -phi * advantages * logps  # [B, T]
        metrics["vespo/phi_seq_mean"] = phi.float().mean()

    if entropy_mask is not None:
        per_token_loss = per_token_loss * entropy_mask.to(logps.dtype)  # [B, T]
    if off_policy_threshold is not None:
        sampled_with = old_logps if sampling_logps is None else sampling_logps
        per_token_loss = per_token_loss * off_policy_mask(advantages, logps, sampled_with, mask, off_policy_threshold)
    if sampler_weights is not None and policy != "vespo":  # the sampler/trainer mismatch (TRL: after the masks)
        per_token_loss = per_token_loss * sampler_weights.to(logps.dtype)
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
    loss = _LOSS_TYPES[loss_type].aggregate(per_token_loss, mask, max_len, num_items)
    return loss, metrics
