"""DAPO's dynamic sampling, the pure part: which groups of a round carry a learning signal.

A group's advantages are its rewards relative to each other (core.advantages). When its G rewards all agree, every
advantage is 0 and the policy gradient is 0: the group only dilutes the batch (DAPO, arXiv 2503.14476, section 3.2).
The loop that drops such groups and refills the round from further prompts is reasonrl.dynamic_sampling.
"""

from __future__ import annotations

import torch


def groups_with_signal(rewards: torch.Tensor, num_generations: int, rtol: float = 1e-6) -> torch.Tensor:
    """Which groups of `rewards` [N] (grouped consecutively by `num_generations`) can teach anything: [N/G] bool.

    A group has no signal when its scorable (non-NaN) rewards all agree, up to rtol * (1 + the largest |reward|)
    (sums of weighted rewards round differently), or when fewer than two of them are scorable: its advantages are
    then all 0 under every scale_rewards.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    rewards = torch.as_tensor(rewards).double().reshape(-1)  # [N]
    if rewards.numel() % num_generations != 0:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of num_generations="
                         f"{num_generations}")
    grouped = rewards.view(-1, num_generations)  # [N/G, G]
    scorable = ~torch.isnan(grouped)
    highest = torch.where(scorable, grouped, torch.full_like(grouped, -torch.inf)).amax(1)  # [N/G]
    lowest = torch.where(scorable, grouped, torch.full_like(grouped, torch.inf)).amin(1)  # [N/G]
    magnitude = torch.where(scorable, grouped.abs(), torch.zeros_like(grouped)).amax(1)  # [N/G]
    spread_ok = (highest - lowest) > rtol * (1 + magnitude)
    return spread_ok & (scorable.sum(1) >= 2)


def select_groups(signal: list[torch.Tensor], wanted: int) -> tuple[list[torch.Tensor], int]:
    """The groups a round keeps, from generation batches in draw order: `signal` holds each batch's
    groups_with_signal [n_i]. Groups with a signal come first, in draw order, up to `wanted`; when there are too few,
    the round is filled up with groups without one, also in draw order (so that it keeps its size).

    Returns (the kept group indices of each batch, in draw order [k_i]; how many of them are filler).
    """
    kept = [torch.zeros_like(s, dtype=torch.bool) for s in signal]
    count = 0
    for batch_kept, batch_signal in zip(kept, signal):
        for index in batch_signal.nonzero().flatten().tolist():
            if count == wanted:
                break
            batch_kept[index] = True
            count += 1
    filler = 0
    for batch_kept in kept:
        for index in (~batch_kept).nonzero().flatten().tolist():
            if count == wanted:
                break
            batch_kept[index] = True
            count, filler = count + 1, filler + 1
    return [batch_kept.nonzero().flatten() for batch_kept in kept], filler
