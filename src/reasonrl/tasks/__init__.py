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
`max_trace_length(**difficulty)`. The tasks: `arithmetic` (digits, ops), `calculator` (digits; a tool task: its
traces are tool-calling exchanges and `task.tools` its tool), `countdown` (count, max_number, max_target), `gsm8k`
(path, split) and `humaneval` (code, scored in `reasonrl.sandbox`); their modules
document the formats and rules. `get_task(name, **options)` binds difficulty options
(`get_task("arithmetic", digits=2)`), and `get_task("rg:NAME", **config)` is a reasoning-gym generator with its
config (`reasonrl.tasks.reasoning_gym`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any

from reasonrl.tasks import arithmetic, calculator, countdown, gsm8k, humaneval
from reasonrl.tasks.task import Row, Task, TaskError

_TASKS: dict[str, Task] = {task.NAME: task.TASK for task in (arithmetic, calculator, countdown, gsm8k, humaneval)}


def available_tasks() -> list[str]:
    """The names of the built-in tasks, sorted."""
    return sorted(_TASKS)


def get_task(name: str, **options: Any) -> Task:
    """The task called `name` (case and dashes ignored), with `options` as defaults of its difficulty options.

    `rg:NAME` is reasoning-gym's generator NAME and `options` its config fields. An unknown name or option
    raises a one-line TaskError.
    """
    if str(name).strip().lower().startswith("rg:"):
        from reasonrl.tasks.reasoning_gym import reasoning_gym_task

        return reasoning_gym_task(str(name), **options)
    key = str(name).strip().lower().replace("-", "_")
    if key not in _TASKS:
        close = difflib.get_close_matches(key, available_tasks(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise TaskError(
            f"unknown task {name!r}; {hint}(available: {', '.join(available_tasks())}, or rg:NAME for a "
            "reasoning-gym generator)"
        )
    return _with_options(_TASKS[key], options) if options else _TASKS[key]


def _with_options(task: Task, options: dict[str, Any]) -> Task:
    """`task` whose generate and max_trace_length default to `options` (checked against generate's)."""
    known = [parameter.name for parameter in inspect.signature(task.generate).parameters.values()
             if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "exclude"]
    for option in options:
        if option not in known:
            close = difflib.get_close_matches(str(option), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TaskError(
                f"task {task.name} has no option {option!r}{hint}; its options: {', '.join(known)}"
            )
    return dataclasses.replace(task, generate=functools.partial(task.generate, **options),
                               max_trace_length=functools.partial(task.max_trace_length, **options))


__all__ = ["Row", "Task", "TaskError", "available_tasks", "get_task"]
