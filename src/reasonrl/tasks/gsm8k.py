"""GSM8K: grade-school word problems, from a local JSONL in GSM8K's format or from the hub (`openai/gsm8k`).

Not generated, so "seed" picks a sample: `generate(None)` is every row in file order, `generate(n, seed)`
a seeded sample of n of them. Rows: `prompt` (the question, a newline and INSTRUCTION), `answer` (the
number after GSM8K's `####`, thousands commas removed: `2,125` -> `2125`), `solution` (GSM8K's full
answer text) and `question`.

Trace: the solution with its `<<48/2=24>>` calculator annotations and its `#### x` line removed:
`<think>Natalia sold 48/2 = 24 clips in May.\\n...</think><answer>72</answer>`.

Verifier: `reasonrl.rewards.score_answer` against `answer`, the same check as the `accuracy` reward
(`$1,234.00` equals 1234; LaTeX goes to math-verify).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from reasonrl.data import DataError, load_dataset_any
from reasonrl.rewards.accuracy import score_answer
from reasonrl.tasks.task import Row, Task, TaskError, check_count, excluded_prompts, format_trace, make_reward

NAME = "gsm8k"
HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
INSTRUCTION = "Reason inside <think></think>, then give the final number inside <answer></answer>."

_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+")


def generate(
    n: int | None = None,
    seed: int = 0,
    *,
    exclude: Iterable[Any] = (),
    path: str | Path | None = None,
    split: str = "test",
) -> list[Row]:
    """GSM8K rows: all of them in file order (n=None) or a sample of n chosen by `seed`.

    `path` is a local GSM8K file (.jsonl, .json, .parquet); without it the `split` of the hub dataset
    openai/gsm8k (config main) is downloaded, which needs the network. Rows whose prompt is in
    `exclude` (prompt strings or rows) are left out, before sampling.
    """
    excluded = excluded_prompts(exclude)
    rows = [row for row in load_rows(path=path, split=split) if row["prompt"] not in excluded]
    if n is None:
        return rows
    check_count(n, f"{NAME}({_source(path, split)})")
    if n > len(rows):
        raise TaskError(
            f"{NAME}: asked for {n} rows but {_source(path, split)} has {len(rows)} (after "
            f"{len(excluded)} excluded prompts); ask for at most {len(rows)} or pass n=None for all"
        )
    return random.Random(seed).sample(rows, n)


def load_rows(*, path: str | Path | None = None, split: str = "test") -> list[Row]:
    """Every row of the file at `path`, or of the hub dataset's `split`, in order (see the module docstring)."""
    try:
        if path is not None:
            records = load_dataset_any(str(Path(path).expanduser())).to_list()
        else:
            records = load_dataset_any(HUB_ID, config=HUB_CONFIG, split=split).to_list()
    except DataError as error:
        if path is not None:
            raise
        raise DataError(
            f"{error}; to work offline pass path= to a local GSM8K JSONL (question, answer ending '#### x')"
        ) from None
    source = _source(path, split)
    return [make_row(record, f"{source} row {index}") for index, record in enumerate(records, start=1)]


def make_row(record: Mapping[str, Any], where: str = "GSM8K record") -> Row:
    """The task row for one GSM8K record `{question, answer: "...#### x"}`; `where` names it in errors."""
    missing = [column for column in ("question", "answer") if not isinstance(record.get(column), str)]
    if missing:
        found = ", ".join(sorted(record)) or "none"
        raise DataError(
            f"{where}: needs text columns 'question' and 'answer' (found: {found}); use GSM8K's format"
        )
    question, solution = record["question"], record["answer"]
    _, hashes, final = solution.rpartition("####")
    final = final.strip()
    if not hashes or not final:
        raise DataError(
            f"{where}: the answer has no final '#### <number>' line; end each GSM8K answer with one"
        )
    if _THOUSANDS.fullmatch(final):
        final = final.replace(",", "")
    return {
        "prompt": f"{question}\n{INSTRUCTION}",
        "answer": final,
        "solution": solution,
        "question": question,
    }


def trace(row: Mapping[str, Any]) -> str:
    """The worked completion for a row: its solution without annotations or `####` line, then the answer."""
    body = str(row["solution"]).rpartition("####")[0]
    return format_trace(_CALCULATOR_ANNOTATION.sub("", body).strip(), str(row["answer"]))


def verify(text: str, row: Mapping[str, Any]) -> float:
    """1.0 if the completion's answer equals the row's `answer` (reasonrl.rewards.score_answer), else 0.0."""
    return 1.0 if score_answer(text, row["answer"]) == 1.0 else 0.0


def max_trace_length(*, path: str | Path | None = None, split: str = "test") -> int:
    """The longest trace in characters among the rows of `path` (or the hub split): it depends on the data."""
    return max(len(trace(row)) for row in load_rows(path=path, split=split))


def _source(path: str | Path | None, split: str) -> str:
    return str(path) if path is not None else f"{HUB_ID} {split}"


gsm8k_accuracy = make_reward("gsm8k_accuracy", verify, ("answer",))

TASK = Task(
    name=NAME,
    description="GSM8K word problems (local JSONL or hub openai/gsm8k), traces from the reference solutions",
    generate=generate,
    trace=trace,
    verify=verify,
    reward=gsm8k_accuracy,
    max_trace_length=max_trace_length,
    columns=("answer",),
)
