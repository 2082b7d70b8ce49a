"""Reward functions: built-in verifiable rewards, a registry, and loading user rewards by name or path.

Every reward has TRL's signature, so TRL reward functions run unchanged:
`fn(prompts=..., completions=..., completion_ids=..., **dataset_columns) -> list[float | None]`, called by
keyword. Completions are strings or conversations (lists of message dicts); None marks an unscorable
completion, which is left out of the advantage statistics.

    >>> from reasonrl.rewards import get_reward
    >>> get_reward("length", ideal_length=3)(completions=["abcd"])
    [-1.0]
"""

from reasonrl.rewards.accuracy import MATH_VERIFY_TIMEOUT_SECONDS, accuracy_reward, score_answer
from reasonrl.rewards.answers import extract_answer, parse_number, reference_answer
from reasonrl.rewards.code import build_program, extract_code, make_code_tests_reward
from reasonrl.rewards.format import format_reward, tag_count_reward
from reasonrl.rewards.length import length_reward, make_length_reward
from reasonrl.rewards.overlong import make_soft_overlong_punishment
from reasonrl.rewards.registry import RewardFunc, RewardSpecError, available_rewards, get_reward, reward_name
from reasonrl.rewards.text import completion_text

__all__ = [
    "MATH_VERIFY_TIMEOUT_SECONDS",
    "RewardFunc",
    "RewardSpecError",
    "accuracy_reward",
    "available_rewards",
    "build_program",
    "completion_text",
    "extract_answer",
    "extract_code",
    "format_reward",
    "get_reward",
    "length_reward",
    "make_code_tests_reward",
    "make_length_reward",
    "make_soft_overlong_punishment",
    "parse_number",
    "reference_answer",
    "reward_name",
    "score_answer",
    "tag_count_reward",
]
