"""Arithmetic: `a+b=`, `a-b=` and `a*b=` on d-digit numbers, with digit-by-digit traces a small model can copy.

Prompts are bare (`243+104=`) because the demo's model reads characters: every character is a token.
Traces (`reasonrl.tasks.arithmetic.trace`), each step on the digits from the least significant one:

- addition, `digit+digit+carry=sum`: `243+104=` -> `<think>3+4+0=7,4+0+0=4,2+1+0=3</think><answer>347</answer>`;
- subtraction, `digit-digit-borrow=difference`, where a digit that borrows is written with its 10 added:
  `243-104=` -> `<think>13-4-0=9,4-0-1=3,2-1-0=1</think><answer>139</answer>`. A negative result is
  worked as the negated reverse subtraction, announced first:
  `12-47=` -> `<think>-(47-12),7-2-0=5,4-1-0=3</think><answer>-35</answer>`;
- multiplication, one partial product per non-zero digit of the second number, then their running sum:
  `23*54=` -> `<think>23*4=92,23*50=1150,92+1150=1242</think><answer>1242</answer>`.

Verifier: the answer is read by `reasonrl.rewards.extract_answer` (so `<answer>...</answer>` in the
format above) and must be an integer, optionally signed, with no inner spaces, commas or decimal point;
it is compared with the reference as an integer, so `+35` and `035` equal 35 but `35.0` and `3 5` score 0.

Difficulty: `digits` (1-9; both operands have exactly that many digits, or are 0-9 for 1) and `ops`
(which operations to draw from, each equally likely: "+", "+-", "+-*", "*", ...). The demo default is
3-digit addition, whose traces are at most 62 characters (`max_trace_length`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

from reasonrl.rewards.answers import extract_answer
from reasonrl.tasks.task import Row, Task, TaskError, draw_unique, format_trace, make_reward

NAME = "arithmetic"
OPERATIONS = "+-*"
MAX_DIGITS = 9

_PROMPT = re.compile(r"(\d+)([-+*])(\d+)=")
_INTEGER = re.compile(r"[+-]?\d{1,60}")  # the length cap keeps int() cheap on runaway model output


def generate(
    n: int, seed: int = 0, *, exclude: Iterable[Any] = (), digits: int = 3, ops: str = "+"
) -> list[Row]:
    """n distinct problems `{prompt: "243+104=", answer: "347"}`, the same for the same arguments.

    Each row draws its operation uniformly from `ops` and both operands uniformly among `digits`-digit
    numbers (0-9 when digits=1). Prompts in `exclude` (prompt strings or rows) are never produced, so
    `generate(200, seed=1, exclude=train_rows)` is a held-out set disjoint from `train_rows`.
    """
    operations = _check_difficulty(digits, ops)
    low, high = (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
    rng = random.Random(seed)

    def draw() -> Row:
        operation = rng.choice(operations)
        return make_row(rng.randint(low, high), operation, rng.randint(low, high))

    return draw_unique(n, draw, exclude, f"{NAME}(digits={digits}, ops={ops!r})")


def make_row(a: int, operation: str, b: int) -> Row:
    """The row for `a <operation> b` with non-negative operands."""
    result = {"+": a + b, "-": a - b, "*": a * b}[operation]
    return {"prompt": f"{a}{operation}{b}=", "answer": str(result)}


def trace(row: Mapping[str, Any]) -> str:
    """The worked completion for a row whose prompt is `<a><op><b>=` (see the module docstring)."""
    match = _PROMPT.fullmatch(str(row["prompt"]).strip())
    if not match:
        raise TaskError(
            f"arithmetic prompt {row['prompt']!r} is not '<a><op><b>=' with non-negative integers a, b "
            f"and op in {OPERATIONS!r}; make rows with reasonrl.tasks.arithmetic.generate"
        )
    a, operation, b = int(match.group(1)), match.group(2), int(match.group(3))
    if operation == "+":
        steps, result = _addition_steps(a, b), a + b
    elif operation == "-":
        steps = _subtraction_steps(a, b) if a >= b else [f"-({b}-{a})", *_subtraction_steps(b, a)]
        result = a - b
    else:
        steps, result = _multiplication_steps(a, b), a * b
    return format_trace(",".join(steps), str(result))


def verify(text: str, row: Mapping[str, Any]) -> float:
    """1.0 if the completion's answer is the reference integer (see the module docstring), else 0.0."""
    predicted = extract_answer(text)
    if predicted is None or not _INTEGER.fullmatch(predicted):
        return 0.0
    return 1.0 if int(predicted) == int(str(row["answer"])) else 0.0


def max_trace_length(*, digits: int = 3, ops: str = "+") -> int:
    """The longest trace, in characters, of any problem of this difficulty (exact, not an estimate).

    Every part of a trace is longest for the same operands, so one worst case per operation gives it:
    all nines for + and * (every sum carries, every partial product and running sum has the most
    digits), and 1 9..9 - 9 0..0 for - (negative, and every digit but the top one borrows).
    For addition this is 32 + 10*digits.
    """
    operations = _check_difficulty(digits, ops)
    nines = 10**digits - 1
    worst = {
        "+": (nines, nines),
        "-": (int("1" + "9" * (digits - 1)), int("9" + "0" * (digits - 1))),
        "*": (nines, nines),
    }
    return max(len(trace(make_row(worst[op][0], op, worst[op][1]))) for op in operations)


def _addition_steps(a: int, b: int) -> list[str]:
    steps, carry = [], 0
    for x, y in _digit_pairs(a, b):
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return steps


def _subtraction_steps(a: int, b: int) -> list[str]:
    """Steps of a - b for a >= b."""
    steps, borrow = [], 0
    for x, y in _digit_pairs(a, b):
        borrows = x - y - borrow < 0
        top = x + 10 if borrows else x
        steps.append(f"{top}-{y}-{borrow}={top - y - borrow}")
        borrow = int(borrows)
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    places = [int(digit) * 10**power for power, digit in enumerate(reversed(str(b))) if digit != "0"] or [0]
    steps = [f"{a}*{place}={a * place}" for place in places]
    total = a * places[0]
    for place in places[1:]:
        steps.append(f"{total}+{a * place}={total + a * place}")
        total += a * place
    return steps


def _digit_pairs(a: int, b: int) -> list[tuple[int, int]]:
    """The digits of a and b from the least significant one, the shorter number padded with zeros."""
    width = max(len(str(a)), len(str(b)))
    return [(int(x), int(y)) for x, y in zip(reversed(str(a).zfill(width)), reversed(str(b).zfill(width)))]


def _check_difficulty(digits: Any, ops: Any) -> list[str]:
    """The distinct operations of `ops`, in order, after checking both options."""
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= MAX_DIGITS:
        raise TaskError(f"arithmetic digits={digits!r} is out of range; pass an int from 1 to {MAX_DIGITS}")
    if not isinstance(ops, str) or not ops or any(op not in OPERATIONS for op in ops):
        raise TaskError(
            f"arithmetic ops={ops!r} is not a string of operations; pass some of {OPERATIONS!r}, e.g. '+-'"
        )
    return list(dict.fromkeys(ops))


arithmetic_accuracy = make_reward("arithmetic_accuracy", verify, ("answer",))

TASK = Task(
    name=NAME,
    description="d-digit addition, subtraction and multiplication with digit-by-digit traces",
    generate=generate,
    trace=trace,
    verify=verify,
    reward=arithmetic_accuracy,
    max_trace_length=max_trace_length,
    columns=("answer",),
)
