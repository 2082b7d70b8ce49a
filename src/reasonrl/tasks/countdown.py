"""Countdown: reach a target from a few numbers with + - * /, e.g. `Make 17 with 3,4,5:` -> `3*4+5`.

Each problem is generated from a random solution (the numbers are combined pairwise at random, as a
player would), so every target is reachable; the numbers are listed sorted, so one problem has one prompt.

Trace: the solution's steps in evaluation order, then the solution:
`<think>3*4=12,12+5=17</think><answer>3*4+5</answer>`.

The rules the verifier applies (`verify`) to the answer, read by `reasonrl.rewards.extract_answer`:

- the answer is an expression of integers, `+ - * /`, parentheses and spaces, read by the safe parser of
  `reasonrl.tasks.expression` (never `eval`); it may end with `=<target>` (`3*4+5=17`), but with no other
  `=`. Letters, `__import__('os')`, `**`, `//`, decimals, unary minus -> 0.0;
- it uses only the given numbers, each at most as often as it is given (a number given twice may be
  used twice); not all of them have to be used;
- every intermediate result must be a whole number: each `/` must divide exactly, and dividing by zero
  scores 0.0 (as the TV game's rule, and so a model cannot lean on fractions such as `(1/3)*6`).
  Negative intermediate results are allowed (`3-5+10` is as good as `10+3-5`);
- the value equals the target exactly.

The generated solutions are stricter than the rules: they use every number once and their intermediate
results are integers from 1 to MAX_INTERMEDIATE, which keeps traces short.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reasonrl.rewards.answers import extract_answer
from reasonrl.tasks.expression import ExpressionError, apply, evaluate, precedence
from reasonrl.tasks.task import TRACE_OVERHEAD, Row, Task, TaskError, draw_unique, format_trace, make_reward

NAME = "countdown"
MAX_INTERMEDIATE = 999
"""Largest intermediate result of a generated solution (the verifier accepts any)."""
MAX_COUNT = 6


def generate(
    n: int,
    seed: int = 0,
    *,
    exclude: Iterable[Any] = (),
    count: int = 4,
    max_number: int = 25,
    max_target: int = 100,
) -> list[Row]:
    """n distinct problems `{prompt, answer, numbers, target}`, the same for the same arguments.

    `count` numbers are drawn from 1..max_number (repeats possible); the target, from 1..max_target and
    never one of the numbers, is the value of a random solution using each of them once, and `answer` is
    that solution (one of possibly many). Prompts in `exclude` (prompt strings or rows) are never produced.
    """
    _check_difficulty(count, max_number, max_target)
    rng = random.Random(seed)

    def draw() -> Row | None:
        numbers = sorted(rng.randint(1, max_number) for _ in range(count))
        solution = _random_solution(numbers, rng)
        if solution is None or not 1 <= solution.value <= max_target or solution.value in numbers:
            return None  # a target among the numbers would be solved by writing it down
        return make_row(numbers, solution.value, solution.text)

    what = f"{NAME}(count={count}, max_number={max_number}, max_target={max_target})"
    return draw_unique(n, draw, exclude, what)


def make_row(numbers: list[int], target: int, answer: str) -> Row:
    """The row for reaching `target` from `numbers`, with `answer` a solution."""
    numbers = sorted(numbers)
    prompt = f"Make {target} with {','.join(str(number) for number in numbers)}:"
    return {"prompt": prompt, "answer": answer, "numbers": numbers, "target": target}


def trace(row: Mapping[str, Any]) -> str:
    """The worked completion for a row: the steps of its `answer` expression, then that expression."""
    try:
        steps = evaluate(str(row["answer"])).steps
    except ExpressionError as error:
        raise TaskError(
            f"countdown answer {row['answer']!r} is not a valid expression ({error}); "
            "make rows with reasonrl.tasks.countdown.generate"
        ) from None
    return format_trace(",".join(steps), str(row["answer"]))


def verify(text: str, row: Mapping[str, Any]) -> float:
    """1.0 if the completion's answer reaches the row's target by the rules in the module docstring."""
    predicted = extract_answer(text)
    if predicted is None:
        return 0.0
    target = int(row["target"])
    expression, equals, stated = predicted.partition("=")
    if equals and stated.strip() != str(target):  # also rejects a second `=`
        return 0.0
    try:
        evaluation = evaluate(expression)
    except ExpressionError:
        return 0.0
    if Counter(evaluation.numbers) - Counter(int(number) for number in row["numbers"]):
        return 0.0
    return 1.0 if evaluation.value == target else 0.0


def max_trace_length(*, count: int = 4, max_number: int = 25, max_target: int = 100) -> int:
    """An upper bound, in characters, on the trace of any problem of this difficulty.

    Each of the count-1 steps `a<op>b=c` has operands of at most max(max_number, MAX_INTERMEDIATE)
    digits and a result of at most MAX_INTERMEDIATE's; the answer has count numbers, count-1 operators
    and at most count-2 pairs of parentheses (the outermost operation needs none).
    """
    _check_difficulty(count, max_number, max_target)
    result_digits = len(str(MAX_INTERMEDIATE))
    operand_digits = max(len(str(max_number)), result_digits)
    steps = (count - 1) * (2 * operand_digits + result_digits + 2) + (count - 2)  # with the commas
    answer = count * len(str(max_number)) + (count - 1) + 2 * (count - 2)
    return TRACE_OVERHEAD + steps + answer


@dataclass(frozen=True)
class _Part:
    """A partial solution: its value, its text with the fewest parentheses, and its operator's precedence."""

    value: int
    text: str
    precedence: int  # 3 for a bare number: it never needs parentheses


def _random_solution(numbers: list[int], rng: random.Random) -> _Part | None:
    """Combine two random parts with a random allowed operation until one is left; None at a dead end."""
    parts = [_Part(number, str(number), 3) for number in numbers]
    while len(parts) > 1:
        first = parts.pop(rng.randrange(len(parts)))
        second = parts.pop(rng.randrange(len(parts)))
        big, small = (first, second) if first.value >= second.value else (second, first)
        choices = [("+", first, second), ("*", first, second)]
        if big.value > small.value:
            choices.append(("-", big, small))
        if small.value > 1 and big.value % small.value == 0:
            choices.append(("/", big, small))
        allowed = [
            (op, left, right)
            for op, left, right in choices
            if apply(op, left.value, right.value) <= MAX_INTERMEDIATE
        ]
        if not allowed:
            return None
        parts.append(_combine(*rng.choice(allowed)))
    return parts[0]


def _combine(operator: str, left: _Part, right: _Part) -> _Part:
    """`left <operator> right`, parenthesised so that the text parses back into this very tree."""
    level = precedence(operator)
    left_text = f"({left.text})" if left.precedence < level else left.text
    # a right operand of the same precedence is bracketed too: a-(b-c), a/(b*c), and a+(b+c) to keep the tree
    right_text = f"({right.text})" if right.precedence <= level else right.text
    value = apply(operator, left.value, right.value)
    return _Part(value, f"{left_text}{operator}{right_text}", level)


def _check_difficulty(count: Any, max_number: Any, max_target: Any) -> None:
    for option, value, low, high in (
        ("count", count, 2, MAX_COUNT),
        ("max_number", max_number, 1, MAX_INTERMEDIATE),
        ("max_target", max_target, 1, MAX_INTERMEDIATE),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise TaskError(
                f"countdown {option}={value!r} is out of range; pass an int from {low} to {high}"
            )


countdown_accuracy = make_reward("countdown_accuracy", verify, ("numbers", "target"))

TASK = Task(
    name=NAME,
    description="reach a target from 2-6 numbers with + - * /; answers checked by a safe exact parser",
    generate=generate,
    trace=trace,
    verify=verify,
    reward=countdown_accuracy,
    max_trace_length=max_trace_length,
    columns=("numbers", "target"),
)
