"""Format rewards for the `<think>...</think><answer>...</answer>` reasoning format.

- `format_reward`: all or nothing; 1.0 when the whole completion is one think block then one answer block.
- `tag_count_reward`: partial credit, 0.25 per tag, so a model gets a gradient towards the format before it
  produces it exactly.
"""

from __future__ import annotations

import re
from typing import Any

from reasonrl.rewards.text import completion_text

# Surrounding whitespace of the completion is stripped first (chat templates and tokenizers often leave a
# leading space or a trailing newline), and whitespace between `</think>` and `<answer>` is allowed, since
# models usually put a newline there. Anything else outside the two blocks fails the match. Unlike TRL's
# think_format_reward, repeated tags are not rejected here: tag_count_reward scores that.
FORMAT_PATTERN = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL)

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 if a completion is `<think>...</think><answer>...</answer>` (see FORMAT_PATTERN), else 0.0."""
    return [1.0 if FORMAT_PATTERN.match(completion_text(c).strip()) else 0.0 for c in completions]


def tag_count_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` that occurs exactly once.

    Order and position are not checked (format_reward does that), and a tag that is missing or repeated
    earns nothing, so the rewards are 0.0, 0.25, 0.5, 0.75 or 1.0.
    """
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        rewards.append(0.25 * sum(text.count(tag) == 1 for tag in TAGS))
    return rewards
