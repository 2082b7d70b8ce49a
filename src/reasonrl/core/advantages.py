"""Group-relative advantages: the "G" in GRPO.

Each prompt gets `num_generations` completions, stored consecutively. A completion's advantage is its reward
relative to the other completions of the same prompt, so no value network is needed.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation with Bessel's correction, ignoring NaN. NaN where fewer than two values are finite."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    sq_dev = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=keepdim)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=keepdim).to(x.dtype)
    # count / (count - 1) turns the population variance into the sample variance; undefined below two samples.
    correction = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(count, float("nan")))
    return torch.sqrt(sq_dev * correction)


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Advantages of `rewards` [N], grouped consecutively by `num_generations`, as TRL's `scale_rewards` does.

    - "group": (r - group mean) / (group std + eps)
    - "batch": (r - group mean) / (std over the whole batch + eps)
    - "none":  r - group mean  (Dr. GRPO)

    Stds use Bessel's correction. The statistics are computed in float64 (the result is float32): in float32 the
    mean of a group of equal large rewards (e.g. nine times 683.43) is not exactly that value, and dividing the
    rounding error by a std of the same size gave such a group advantages of about -0.35 instead of 0. NaN marks
    an unscorable completion: it is left out of every mean and std and its advantage is 0, as is every advantage
    whose statistics are undefined (a group with one scorable value).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    rewards = torch.as_tensor(rewards).double().reshape(-1)  # [N]
    n = rewards.numel()
    if n % num_generations != 0:
        raise ValueError(
            f"{n} rewards cannot be split into groups of num_generations={num_generations} "
            f"({n} % {num_generations} = {n % num_generations})"
        )
    grouped = rewards.view(-1, num_generations)  # [N/G, G]
    group_mean = torch.nanmean(grouped, dim=1, keepdim=True)  # [N/G, 1]
    advantages = grouped - group_mean  # [N/G, G]
    if scale == "group":
        advantages = advantages / (nanstd(grouped, dim=1, keepdim=True) + eps)
    elif scale == "batch":
        advantages = advantages / (nanstd(rewards) + eps)
    return torch.nan_to_num(advantages.reshape(-1), nan=0.0).float()  # [N]


def normalized_sum_advantages(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int, eps: float = 1e-4
) -> torch.Tensor:
    """Advantages under multi_objective_aggregation="normalize_then_sum" (GDPO, as TRL): each reward function's
    values [N, F] are standardised within their group, (r - group mean) / (group std + eps), their weighted sum is
    standardised over the whole batch, (s - mean) / (std + eps). NaN (None) values are left out of every mean and
    std and out of the sum; a completion no function scored gets advantage 0. Computed in float64 -> float32 [N]."""
    per_func = torch.as_tensor(rewards_per_func).double()  # [N, F]
    n, num_funcs = per_func.shape
    if n % num_generations != 0:
        raise ValueError(f"{n} rewards cannot be split into groups of num_generations={num_generations}")
    grouped = per_func.view(-1, num_generations, num_funcs)  # [N/G, G, F]
    standardised = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (
        nanstd(grouped, dim=1, keepdim=True) + eps)
    if num_generations == 1:  # no group statistics: a group of one has no spread
        standardised = grouped - grouped
    standardised = standardised.view(n, num_funcs)  # [N, F]
    summed = (standardised * torch.as_tensor(weights).double()[None]).nansum(dim=1)  # [N]
    summed[torch.isnan(per_func).all(dim=1)] = float("nan")
    advantages = (summed - torch.nanmean(summed)) / (nanstd(summed) + eps)
    return torch.nan_to_num(advantages, nan=0.0).float()
