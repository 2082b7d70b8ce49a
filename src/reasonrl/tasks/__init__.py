"""Built-in verifiable tasks: seeded problem generators, reasoning traces for warm start, and their verifiers.

    >>> from reasonrl.tasks import get_task
    >>> task = get_task("arithmetic")
    >>> train = task.generate(2, seed=0)
    >>> evaluation = task.generate(2, seed=1, exclude=train)  # held out: no prompt of `train`
    >>> task.trace({"prompt": "243+104=", "answer": "347"})
    '<think>3+4+0=7,4+0+0=4,2+1+0=3</think><answer>347</answer>'
    >>> task.reward(completions=["<answer>347</answer>", "<answer>348</answer>"], answer=["347", "347"])
    [1.0, 0.0]

Each task (a `Task`) has `generate(n, seed, *, exclude=(), **difficulty)`, `trace(row)`,
`verify(text, row)`, `reward` (TRL's signature, named `<task>_accuracy`) and
`max_trace_length(**difficulty)`. The tasks: `arithmetic` (digits, ops), `countdown` (count, max_number,
max_target), `gsm8k` (path, split) and `humaneval` (code, scored in `reasonrl.sandbox`); their modules
document the formats and rules.
"""

from __future__ import annotations

import difflib

from reasonrl.errors import TaskError
from reasonrl.tasks import arithmetic, countdown, gsm8k, humaneval
from reasonrl.tasks.task import Row, Task

_TASKS: dict[str, Task] = {task.NAME: task.TASK for task in (arithmetic, countdown, gsm8k, humaneval)}


def available_tasks() -> list[str]:
    """The names of the built-in tasks, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The task called `name` (case and dashes ignored); an unknown name raises a one-line TaskError."""
    key = str(name).strip().lower().replace("-", "_")
    if key in _TASKS:
        return _TASKS[key]
    close = difflib.get_close_matches(key, available_tasks(), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise TaskError(f"unknown task {name!r}; {hint}(available: {', '.join(available_tasks())})")


__all__ = ["Row", "Task", "available_tasks", "get_task"]
