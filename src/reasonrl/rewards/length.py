"""Length reward: the seed notebook's toy objective, "write completions of about `ideal_length` characters".

reward = -|ideal_length - len(text)|, counted in characters of the completion text (not tokens), so the best
possible reward is 0.0 and every character away from the target costs 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reasonrl.rewards.text import completion_text

DEFAULT_IDEAL_LENGTH = 50


def make_length_reward(ideal_length: int = DEFAULT_IDEAL_LENGTH) -> Callable[..., list[float]]:
    """A length reward with its target set to `ideal_length` characters. Its `__name__` is `length_reward`."""
    if isinstance(ideal_length, bool) or not isinstance(ideal_length, int) or ideal_length < 0:
        raise ValueError(f"ideal_length must be a non-negative integer, got {ideal_length!r}")

    def length_reward(completions: list[Any], **kwargs: Any) -> list[float]:
        """-|ideal_length - len(text)| for each completion; other keyword arguments are ignored."""
        return [-float(abs(ideal_length - len(completion_text(c)))) for c in completions]

    length_reward.ideal_length = ideal_length  # type: ignore[attr-defined]  # visible when debugging configs
    return length_reward


length_reward = make_length_reward(DEFAULT_IDEAL_LENGTH)
