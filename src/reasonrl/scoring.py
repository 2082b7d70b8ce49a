"""Call the reward functions on a generation round and combine their scores, with TRL's semantics.

Each function returns one value per completion; None means "cannot score this one" and becomes NaN. The combined
reward is the weighted sum over functions, ignoring NaN, and is NaN only when every function returned None.
"""

from __future__ import annotations

import math

import torch


class RewardError(ValueError):
    """A reward function misbehaved (one line naming the function and the problem)."""


def call_reward(fn, name: str, prompts: list, completions: list, completion_ids: list, columns: dict) -> list:
    """One reward function on a round; checks the count and types of what it returns."""
    try:
        values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
    except Exception as error:
        raise RewardError(f"reward function '{name}' raised {type(error).__name__}: "
                          f"{(str(error).splitlines() or [''])[0][:300]}") from error
    values = _as_list(values, name)
    if len(values) != len(completions):
        raise RewardError(f"reward function '{name}' returned {len(values)} values for {len(completions)} "
                          f"completions; it must return exactly one per completion")
    scores = []
    for value in values:
        if value is None:
            scores.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise RewardError(f"reward function '{name}' returned a {type(value).__name__} ({value!r:.50}); "
                              f"rewards must be floats or None")
        value = float(value)
        if math.isnan(value):
            raise RewardError(f"reward function '{name}' returned NaN; return None for a completion it cannot score")
        scores.append(value)
    return scores


def _as_list(values, name: str) -> list:
    if not isinstance(values, (str, bytes, dict)):  # these iterate, but not as one value per completion
        try:
            return list(values)
        except TypeError:
            pass
    returned = "None" if values is None else f"a {type(values).__name__} ({values!r:.50})"
    raise RewardError(f"reward function '{name}' returned {returned}; it must return a list with one float (or None) "
                      f"per completion")


def score_round(reward_funcs: list, names: list[str], prompts: list, completions: list, completion_ids: list,
                columns: dict) -> torch.Tensor:
    """Rewards per function: [B, F], NaN where a function returned None."""
    per_func = [call_reward(fn, name, prompts, completions, completion_ids, columns)
                for fn, name in zip(reward_funcs, names)]
    return torch.tensor(per_func, dtype=torch.float32).T.reshape(len(completions), len(reward_funcs))


def combine_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over functions [B, F] -> [B], NaN-aware; NaN where every function returned None."""
    combined = (rewards_per_func * weights[None]).nansum(dim=1)
    combined[torch.isnan(rewards_per_func).all(dim=1)] = math.nan
    return combined
