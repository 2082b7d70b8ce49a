"""Accuracy reward: 1.0 when the completion's final answer equals the reference answer, else 0.0.

The answer is pulled out of the completion by `extract_answer` (answer tags, `\\boxed{}`, `####`, `A: x`,
`The answer is x`) and out of the reference by `reference_answer` (so a GSM8K `...#### 18` becomes `18`).
Two plain numbers are compared exactly with Fraction, which is fast and settles almost every GSM8K-style
case (`1,234` == `1234`, `$18` == `18` == `18.00` == `18 dollars`, `0.75` == `3/4`; a percentage `50%`
equals 50 or 0.5, as in math-verify). Anything else goes to math-verify, which understands LaTeX and
symbolic expressions (`\\frac{1}{2}` == `0.5`, `\\sqrt{2}/2` == `1/\\sqrt{2}`, `2^{10}` == `1024`).

math-verify bounds each parse and comparison with a timeout based on `signal.alarm`, which only works in the
main thread. There we use it (MATH_VERIFY_TIMEOUT_SECONDS; note it briefly takes over SIGALRM and cancels
any pending alarm). Off the main thread (a thread pool, a server) the timeout is disabled, as math-verify
requires; a pathological expression (a 40-level tower `x^x^...^2` runs past 5 s) can then run long, and the
caller must bound the time itself.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from reasonrl.rewards.answers import extract_answer, is_percentage, parse_number, reference_answer
from reasonrl.rewards.text import completion_text

MATH_VERIFY_TIMEOUT_SECONDS = 5
"""Seconds math-verify may spend on one parse or one comparison (main thread only; whole seconds)."""


def accuracy_reward(
    completions: list[Any],
    answer: Sequence[Any] | None = None,
    solution: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if a completion's final answer matches its reference, 0.0 if not, None if it cannot be scored.

    The reference comes from the dataset's `answer` column, or its `solution` column (TRL's name) where
    `answer` is absent or None. None means the reference is missing or math-verify cannot read it, so the
    completion is left out of training rather than punished. A completion without a recognisable answer,
    or one math-verify fails on, scores 0.0: model text never makes this raise. Other keyword arguments
    (dataset columns, `trainer_state`, ...) are ignored.
    """
    if answer is None and solution is None:
        raise ValueError(
            f"accuracy_reward needs the reference answers in an 'answer' or 'solution' dataset column "
            f"(got columns: {', '.join(sorted(kwargs)) or 'none'}); rename your reference column to 'answer'"
        )
    for column_name, column in (("answer", answer), ("solution", solution)):
        if column is not None and len(column) != len(completions):
            raise ValueError(
                f"accuracy_reward got {len(completions)} completions but {len(column)} '{column_name}' "
                "values; "
                "pass one reference per completion"
            )
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        reference = answer[i] if answer is not None else None
        if reference is None and solution is not None:
            reference = solution[i]
        rewards.append(score_answer(completion_text(completion), reference))
    return rewards


accuracy_reward.answer_columns = ("answer", "solution")  # it needs one of them (checked before a model loads)


def score_answer(text: str, reference: Any) -> float | None:
    """accuracy_reward for one completion text: 1.0, 0.0, or None when the reference is unusable."""
    gold = reference_answer(reference)
    if gold is None:
        return None
    predicted = extract_answer(text)
    gold_number = parse_number(gold)
    if gold_number is not None:  # a plain-number reference is always scorable
        if predicted is None:
            return 0.0
        predicted_number = parse_number(predicted)
        if predicted_number is not None:
            return float(bool(_readings(gold_number, gold) & _readings(predicted_number, predicted)))
    timeout = _timeout_seconds()
    gold_parsed = _parse_reference(gold, timeout)
    if not gold_parsed:
        return None
    if predicted is None:
        return 0.0
    predicted_parsed = _math_verify_parse(predicted, timeout)
    if not predicted_parsed:
        return 0.0
    try:
        return float(verify(list(gold_parsed), predicted_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # noqa: BLE001  # model text must never crash training;
        # TimeoutException is a BaseException, so it is named explicitly
        return 0.0


def _readings(number: Fraction, text: str) -> set[Fraction]:
    """The values `text` may mean: a percentage `50%` may mean 50 or 0.5, as math-verify also accepts."""
    return {number, number / 100} if is_percentage(text) else {number}


def _timeout_seconds() -> int | None:
    """math-verify's timeout for this thread: None (disabled) off the main thread, where signals fail."""
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_SECONDS
    _silence_timeout_warning()
    return None


@functools.lru_cache(maxsize=4096)
def _parse_reference(gold: str, timeout: int | None) -> tuple[Any, ...]:
    """The reference parsed by math-verify, cached: each prompt's reference is scored G times per step."""
    return tuple(_math_verify_parse(gold, timeout))


def _math_verify_parse(text: str, timeout: int | None) -> list[Any]:
    """math-verify's reading of an extracted answer, [] if it has none.

    The text is read as inline LaTeX (wrapped in `$...$` unless it has math delimiters already): parsed bare,
    math-verify misreads `1/\\sqrt{2}` as 1 and `2^{10}` as 2, and ignores `\\sqrt{2}` altogether.
    """
    if not any(delimiter in text for delimiter in ("$", "\\(", "\\[")):
        text = "$" + re.sub(r"(?<!\\)%", r"\\%", text) + "$"  # a bare % would start a LaTeX comment
    try:
        return parse(text, parsing_timeout=timeout)
    except (Exception, TimeoutException):  # noqa: BLE001  # see verify above: unreadable is not an error
        return []


class _DropTimeoutDisabledWarning(logging.Filter):
    """Hides math-verify's "Timeout is disabled" warning, which we trigger on purpose off the main thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _silence_timeout_warning() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
