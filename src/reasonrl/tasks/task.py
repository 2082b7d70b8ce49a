"""What every task is made of: the `Task` record, the reward built from a verifier, and unique seeded draws.

A task is plain functions gathered in a frozen dataclass (no base class to inherit from): a seeded
generator of rows, the reasoning trace of a row for supervised warm start, a verifier of one completion,
the TRL-signature reward built from that verifier, and the longest trace a difficulty can produce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reasonrl.errors import TaskError
from reasonrl.rewards.text import completion_text

Row = dict[str, Any]
"""One problem: at least `prompt` and `answer` (both str), plus the columns its verifier reads."""


@dataclass(frozen=True)
class Task:
    """A verifiable task. Each field is a plain function; see the task's module for its difficulty options.

    - `generate(n, seed, *, exclude=(), **difficulty) -> list[Row]`: n distinct problems, the same for the
      same arguments; rows whose prompt is in `exclude` (prompts or rows) are never produced;
    - `trace(row) -> str`: a correct `<think>...</think><answer>...</answer>` completion for the row (a tool
      task's: TRL's completion messages, the tool calls and results included);
    - `verify(text, row) -> float`: 1.0 if the completion text solves the row, else 0.0 (rg: tasks keep their
      generator's partial credit, in [0, 1]); never raises on model text;
    - `reward`: `verify` with TRL's reward signature, named `<task>_accuracy`;
    - `max_trace_length(**difficulty) -> int`: the longest `trace` in characters, for max_completion_length;
    - `columns`: the dataset columns `reward` reads besides the completions;
    - `tools`: the functions the task's prompts expect to call (train with `tools=task.tools`); none for most.
    """

    name: str
    description: str
    generate: Callable[..., list[Row]]
    trace: Callable[[Mapping[str, Any]], Any]
    verify: Callable[[str, Mapping[str, Any]], float]
    reward: Callable[..., list[float | None]]
    max_trace_length: Callable[..., int]
    columns: tuple[str, ...]
    tools: tuple[Callable, ...] = ()


def format_trace(thinking: str, answer: str) -> str:
    """The completion format that `reasonrl.rewards.format_reward` scores 1.0."""
    return f"<think>{thinking}</think><answer>{answer}</answer>"


TRACE_OVERHEAD = len(format_trace("", ""))
"""Characters of the four tags alone (32)."""


def make_reward(
    name: str, verify: Callable[[str, Mapping[str, Any]], float], columns: tuple[str, ...]
) -> Callable[..., list[float | None]]:
    """`verify` as a TRL reward function `fn(prompts, completions, completion_ids, **columns)` called `name`.

    Each completion is scored against the row made of the `columns` values at its index (TRL passes every
    dataset column as a list with one value per completion). Other keyword arguments, such as TRL's
    `trainer_state`, are ignored.
    """

    def reward(
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[Any] | None = None,
        **dataset_columns: Any,
    ) -> list[float | None]:
        if completions is None:
            raise TaskError(f"{name} needs completions=[...]; call it as TRL does, by keyword")
        missing = [column for column in columns if column not in dataset_columns]
        if missing:
            found = ", ".join(sorted(dataset_columns)) or "none"
            raise TaskError(
                f"{name} needs the dataset column(s) {', '.join(missing)} (got columns: {found}); "
                f"train on rows made by the task's generate()"
            )
        for column in columns:
            if len(dataset_columns[column]) != len(completions):
                raise TaskError(
                    f"{name} got {len(completions)} completions but {len(dataset_columns[column])} "
                    f"'{column}' values; pass one value per completion"
                )
        scores: list[float | None] = []
        for index, completion in enumerate(completions):
            row = {column: dataset_columns[column][index] for column in columns}
            scores.append(verify(completion_text(completion), row))
        return scores

    reward.__name__ = reward.__qualname__ = name
    reward.required_columns = tuple(columns)  # checked against the training data before a model loads
    reward.__doc__ = f"1.0 per completion that `verify` accepts for its row, else 0.0 (columns: {columns})."
    return reward


def excluded_prompts(exclude: Iterable[Any]) -> set[str]:
    """The prompts in `exclude`, which may hold prompt strings or rows (dicts with a `prompt`)."""
    if isinstance(exclude, (str, bytes)):
        raise TypeError("exclude must be a collection of prompts or rows, not one string; wrap it: {prompt}")
    prompts = set()
    for item in exclude:
        prompts.add(item["prompt"] if isinstance(item, Mapping) else item)
    return prompts


def draw_unique(n: int, draw: Callable[[], Row | None], exclude: Iterable[Any], what: str) -> list[Row]:
    """n rows from repeated `draw()` calls, skipping repeats, excluded prompts and draws that return None.

    `what` names the task and difficulty for the error raised when the problem space runs out.
    """
    check_count(n, what)
    seen = excluded_prompts(exclude)
    rows: list[Row] = []
    attempts, limit = 0, 50 * n + 10_000  # far above the coupon-collector cost of any feasible request
    while len(rows) < n:
        if attempts == limit:
            raise TaskError(
                f"{what}: found only {len(rows)} of {n} distinct problems in {limit} draws (with "
                f"{len(seen) - len(rows)} excluded prompts); ask for fewer rows or a harder difficulty"
            )
        attempts += 1
        row = draw()
        if row is None or row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows


def check_count(n: Any, what: str) -> None:
    """Raise a one-line TaskError unless n is a non-negative int."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise TaskError(f"{what}: n={n!r} is not a number of rows; pass an int >= 0")
