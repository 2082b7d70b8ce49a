"""Soft overlong punishment: DAPO's length shaping (arXiv 2503.14476, Eq. 13), counted in completion tokens.

With L = max_completion_len and C = soft_punish_cache, a completion of n tokens scores

    0                      when n <= L - C
    ((L - C) - n) / C      when L - C < n <= L   (a linear ramp from 0 down to -1)
    -1                     when n > L

so long completions are penalised, short ones are not rewarded. Same values as TRL's
`get_soft_overlong_punishment(max_completion_len, soft_punish_cache)`, logged under the same name.
"""

from __future__ import annotations

from typing import Any


class SoftOverlongPunishment:
    """The reward callable; build it with `make_soft_overlong_punishment` (or the registry name
    `soft_overlong_punishment`), which checks the options."""

    __name__ = "soft_overlong_punishment_reward"  # TRL's name, so the metric is rewards/<this>/mean in both

    def __init__(self, max_completion_len: int, soft_punish_cache: int):
        self.max_completion_len = max_completion_len
        self.soft_punish_cache = soft_punish_cache

    def __call__(self, completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        """One value per completion from its token count (`completion_ids`, which include the EOS token as in TRL);
        other keyword arguments are ignored."""
        start = self.max_completion_len - self.soft_punish_cache  # the longest completion that is not penalised
        rewards = []
        for ids in completion_ids:
            length = len(ids)
            if length <= start:
                rewards.append(0.0)
            elif length <= self.max_completion_len:
                rewards.append((start - length) / self.soft_punish_cache)
            else:
                rewards.append(-1.0)
        return rewards

    def __repr__(self) -> str:
        return (f"SoftOverlongPunishment(max_completion_len={self.max_completion_len}, "
                f"soft_punish_cache={self.soft_punish_cache})")


def make_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int) -> SoftOverlongPunishment:
    """The punishment for completions longer than `max_completion_len - soft_punish_cache` tokens (use the run's
    max_completion_length; DAPO used a cache of 4096 of 20480). soft_punish_cache=0 punishes only completions longer
    than max_completion_len, with -1."""
    for name, value in (("max_completion_len", max_completion_len), ("soft_punish_cache", soft_punish_cache)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer number of tokens, got {value!r}")
    if max_completion_len < 1:
        raise ValueError(f"max_completion_len must be >= 1, got {max_completion_len}")
    if not 0 <= soft_punish_cache <= max_completion_len:
        raise ValueError(f"soft_punish_cache must be in [0, max_completion_len={max_completion_len}], got "
                         f"{soft_punish_cache}")
    return SoftOverlongPunishment(max_completion_len, soft_punish_cache)
