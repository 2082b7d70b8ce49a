"""reasoning-gym generators as tasks: `get_task("rg:chain_sum", min_terms=2)`, scored by the generator.

reasoning-gym (PyPI `reasoning-gym`, Apache-2.0, offline) has about 100 generators of reasoning problems, each
with a config dataclass and a scorer `score_answer(answer, entry) -> float`. `get_task("rg:NAME", **config)`
makes generator NAME a `Task`; reasoning-gym is imported on first use (it takes a few seconds).

- Config: the fields of the generator's config dataclass except `seed` and `size`, which reasonrl sets. From
  Python, keywords of get_task (or of generate and max_trace_length, which override them); from the command
  line, `--task rg:chain_sum --task-config '{min_terms: 2, max_terms: 3}'` (a YAML mapping). An unknown
  generator, an unknown field or a value the generator rejects is a one-line TaskError.
- Rows: `prompt` is the generator's question, a newline and INSTRUCTION (the `<think>`/`<answer>` format of
  the built-in tasks); `answer` is the generator's reference answer, None for the generators that have none
  (their scorers check a proposed solution: propositional_logic, graph_color, rush_hour, ...); `rg_entry` is a
  JSON string {"dataset", "config", "entry"} holding all the scorer reads, so rows score the same after a
  datasets or JSONL round trip. generate() checks that on its first rows, and refuses generators whose entries
  do not survive JSON (arc_agi, rearc); REFUSED lists the generators reasonrl does not offer (composite;
  coin_flip and game_of_life_halting, whose scorers a constant answer beats). generate() skips the rows whose
  reference answer does not score 1.0 through `verify`, problems that their own reference fails
  (intermediate_integration sometimes gives `Integral(...)`, an integral sympy could not do, which rg_guard
  refuses because that answer would pass any problem).
- Seeds: reasoning-gym seeds item i of a dataset with `seed + i`, so its seeds 1 and 2 share all items but
  one. reasonrl's `seed` is therefore spread to `rg_seed(seed)`, a 31-bit hash, and generate() reads items
  rg_seed(seed) + 0, 1, 2, ... (in datasets of CHUNK items), skipping repeated and excluded prompts. Held-out
  splits: `generate(n, seed=2, exclude=train_rows)` never returns a prompt of train_rows.
- Verifier: the answer is read by `reasonrl.rewards.extract_answer` (the last `<answer>...</answer>`, else a
  `\\boxed{}`, `####` or `Answer:` line) and scored by the generator's own score_answer, with the config
  stored in the row. Scores are clamped to [0, 1]; a scorer that raises scores 0.0. Several scorers give
  partial credit (a near-miss string, 0.01 for a wrong number in gsm_symbolic, 0.05 for countdown's wrong
  total): the reward keeps it, and `reasonrl eval` counts a completion correct when it scores above 0.5.
  Answers that a scorer would evaluate as code first pass `reasonrl.tasks.rg_guard`.
- Traces: reasoning-gym has no worked solutions for most generators, so `trace` is answer-only,
  `<think></think><answer>ANSWER</answer>` (a format warm start, not a reasoning one); gsm_symbolic's worked
  solution (`answer_cot`) is used as the thinking. Rows without a reference answer have no trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import io
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from reasonrl.rewards.answers import extract_answer
from reasonrl.tasks import rg_guard
from reasonrl.tasks.task import Row, Task, TaskError, check_count, draw_unique, format_trace, make_reward

PREFIX = "rg:"
ENTRY_COLUMN = "rg_entry"
INSTRUCTION = "Reason inside <think></think>, then give the final answer inside <answer></answer>."
CHUNK = 500
"""Items per reasoning-gym dataset object that generate() reads (reasoning-gym's default size)."""
TRACE_SAMPLE = 32
"""Items whose traces max_trace_length measures."""
NO_REFERENCE_TRACE_LENGTH = 512
"""max_trace_length of a generator without reference answers: a bound for short answers, not a measure."""
ROUND_TRIP_CHECKS = 8
"""Entries of each generate() call whose reference is scored before and after the JSON round trip."""
RESERVED_FIELDS = ("seed", "size")
REFUSED = {
    "composite": "it mixes generators, which would hide from reasonrl the scorers that evaluate answers as "
                 "code; make one task per generator",
    # scorers that a constant answer beats (reasoning-gym 0.1.25): a policy would learn the constant
    "coin_flip": "its scorer gives 1.0 to the answer 0 for every probability below 1 (it credits a matching "
                 "prefix of the shorter string)",
    "game_of_life_halting": "its scorer gives 1.0 to any non-empty answer (it compares bool() of strings)",
}


def reasoning_gym_task(name: str, **config: Any) -> Task:
    """The Task of reasoning-gym generator `name` (without the `rg:` prefix) with `config` as its defaults."""
    generator = _generator_name(name)
    base = _checked_config(generator, config)

    def generate(n: int, seed: int = 0, *, exclude: Iterable[Any] = (), **overrides: Any) -> list[Row]:
        return generate_rows(generator, n, seed, exclude=exclude, **{**base, **overrides})

    def max_trace_length(**overrides: Any) -> int:
        return _max_trace_length(generator, _config_key(_checked_config(generator, {**base, **overrides})))

    return Task(
        name=f"{PREFIX}{generator}",
        description=f"reasoning-gym {generator}: {_summary(generator)}",
        generate=generate,
        trace=trace,
        verify=verify,
        reward=make_reward(f"rg_{generator}_accuracy", verify, (ENTRY_COLUMN,)),
        max_trace_length=max_trace_length,
        columns=(ENTRY_COLUMN,),
    )


def available_generators() -> list[str]:
    """The names of reasoning-gym's generators that reasonrl can use, sorted."""
    return sorted(name for name in _registry() if name not in REFUSED)


def rg_seed(seed: int) -> int:
    """The reasoning-gym seed of reasonrl's `seed`: 31 bits of its SHA-256, so that seeds' items differ."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskError(f"seed={seed!r} is not an int; pass an integer seed")
    return int.from_bytes(hashlib.sha256(f"reasonrl:{seed}".encode()).digest()[:4], "big") >> 1


def generate_rows(
    generator: str, n: int, seed: int = 0, *, exclude: Iterable[Any] = (), **config: Any
) -> list[Row]:
    """n distinct rows of `generator` (see the module docstring), the same for the same arguments."""
    config = _checked_config(generator, config)
    what = f"{PREFIX}{generator}({_config_text(config)})"
    check_count(n, what)
    items = _items(generator, config, rg_seed(seed))
    checked = 0

    def draw() -> Row | None:
        nonlocal checked
        entry = next(items)
        row = make_row(generator, config, entry)
        if row["answer"] is None:
            return row
        if checked < ROUND_TRIP_CHECKS:
            _check_round_trip(generator, config, entry, row)
            checked += 1
        if score(generator, config, read_entry(row)["entry"], row["answer"]) < 1.0:
            return None  # its own reference fails the verifier: a problem no answer is sure to solve
        return row

    return draw_unique(n, draw, exclude, what)


def make_row(generator: str, config: Mapping[str, Any], entry: Mapping[str, Any]) -> Row:
    """The task row of one reasoning-gym entry {question, answer, metadata} made with `config`."""
    record = {"dataset": generator, "config": dict(config), "entry": dict(entry)}
    answer = entry.get("answer")
    return {
        "prompt": f"{entry['question']}\n{INSTRUCTION}",
        "answer": None if answer is None else str(answer),
        ENTRY_COLUMN: json.dumps(record, ensure_ascii=False, default=_jsonable),
    }


def read_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """The record {dataset, config, entry} stored in a row's `rg_entry` column."""
    text = row.get(ENTRY_COLUMN)
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not {"dataset", "config", "entry"} <= set(record):
        raise TaskError(
            f"row has no valid '{ENTRY_COLUMN}' column (got {str(text)[:60]!r}); score rows made by an rg: "
            "task's generate()"
        )
    return record


def verify(text: str, row: Mapping[str, Any]) -> float:
    """The generator's score in [0, 1] of the completion's answer (see the module docstring).

    Never raises on model text; a row that is not an rg: task's raises TaskError.
    """
    record = read_entry(row)
    return score(record["dataset"], record["config"], record["entry"], extract_answer(text))


def score(generator: str, config: Mapping[str, Any], entry: Mapping[str, Any], answer: str | None) -> float:
    """reasoning-gym's score of `answer` (None: no answer given) for `entry`, clamped to [0, 1].

    Model text the generator's scorer would run as code scores 0.0 unless `rg_guard` admits it; a reference it
    would run that is not plain data (a crafted file) raises TaskError.
    """
    if generator in REFUSED or generator not in _registry():  # a crafted row must not pick a scorer
        raise TaskError(
            f"row's {ENTRY_COLUMN} names the generator {str(generator)[:60]!r}, which reasonrl does not "
            "score; score rows made by an rg: task's generate()"
        )
    if answer is not None and not rg_guard.admits(generator, answer):
        return 0.0
    if not rg_guard.admits_reference(generator, entry.get("answer")):
        raise TaskError(
            f"{PREFIX}{generator} row's reference answer {str(entry.get('answer'))[:60]!r} is not a plain "
            "list; the file was not made by generate(), remake it"
        )
    dataset = _dataset(generator, _config_key(config))
    try:
        value = float(dataset.score_answer(answer, dict(entry)))
    except Exception:  # noqa: BLE001 - a scorer's failure on model text is a wrong answer, not a crash
        return 0.0
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def trace(row: Mapping[str, Any]) -> str:
    """`<think>WORKED SOLUTION or nothing</think><answer>REFERENCE</answer>` for a row with a reference."""
    record = read_entry(row)
    entry = record["entry"]
    if entry.get("answer") is None:
        raise TaskError(
            f"{PREFIX}{record['dataset']} has no reference answers, so no traces to train on; use it for "
            "eval and GRPO only"
        )
    worked = entry.get("metadata", {}).get("answer_cot")
    return format_trace(worked.strip() if isinstance(worked, str) else "", str(entry["answer"]))


# ---- reasoning-gym's registry, datasets and items


def _registry() -> dict[str, Any]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise TaskError(
            "rg: tasks need the reasoning-gym package; install it: pip install 'reasoning-gym>=0.1.25,<0.2'"
        ) from None
    return DATASETS


def _generator_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_").removeprefix(PREFIX)
    if key in REFUSED:
        raise TaskError(f"{PREFIX}{key} is not supported: {REFUSED[key]}")
    names = available_generators()
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"the generators: {', '.join(names)}"
    raise TaskError(f"unknown reasoning-gym generator {name!r}; {hint}")


def _checked_config(generator: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` after checking its fields and building the generator with it once."""
    config_class = _registry()[generator][1]
    fields = [field.name for field in dataclasses.fields(config_class) if field.name not in RESERVED_FIELDS]
    for key in config:
        if key in RESERVED_FIELDS:
            raise TaskError(
                f"{PREFIX}{generator}: '{key}' is set by reasonrl (generate's "
                f"{'seed' if key == 'seed' else 'n'}); drop it from the config"
            )
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TaskError(
                f"{PREFIX}{generator} has no config field {key!r}{hint}; its fields: "
                f"{', '.join(fields) or 'none'}"
            )
    _dataset(generator, _config_key(config))
    return dict(config)


def _config_key(config: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(config), sort_keys=True)
    except (TypeError, ValueError):
        raise TaskError(
            f"task config {dict(config)!r} is not plain data; use numbers, strings, booleans, lists, mappings"
        ) from None


def _config_text(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in config.items())


@functools.lru_cache(maxsize=64)
def _dataset(generator: str, config_key: str) -> Any:
    """The generator's dataset object for a config (cached: the scorer of a config is built once)."""
    import reasoning_gym

    config = json.loads(config_key)
    try:
        return reasoning_gym.create_dataset(generator, seed=0, size=1, **config)
    except (AssertionError, TypeError, ValueError) as error:  # config.validate() asserts
        config_class = _registry()[generator][1].__name__
        problem = str(error).splitlines()[0] if str(error) else f"{config_class}.validate() failed, silently"
        raise TaskError(
            f"{PREFIX}{generator} rejects the config {{{_config_text(config)}}}: {problem}; see "
            f"{config_class} in reasoning-gym for the allowed values"
        ) from None


def _items(generator: str, config: Mapping[str, Any], base_seed: int):
    """reasoning-gym's items base_seed + 0, 1, 2, ..., read from datasets of CHUNK items."""
    import reasoning_gym

    index = 0
    while True:
        chunk_seed = base_seed + index
        dataset = reasoning_gym.create_dataset(generator, seed=chunk_seed, size=CHUNK, **config)
        for position in range(CHUNK):
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # bf's compiler prints progress dots
                    item = dataset[position]
            except Exception as error:  # noqa: BLE001 - the generator's failure on a config the user chose
                problem = (str(error).splitlines() or [""])[0][:200] or type(error).__name__
                raise TaskError(
                    f"{PREFIX}{generator} failed to generate item {index + position} with config "
                    f"{{{_config_text(config)}}}: {problem}; try another config"
                ) from None
            yield item
        index += CHUNK


def _check_round_trip(generator: str, config: Mapping[str, Any], entry: Mapping[str, Any], row: Row) -> None:
    """Refuse a generator whose scorer reads an entry differently after it passes through JSON."""
    reference = str(entry["answer"])
    before = score(generator, config, entry, reference)
    after = score(generator, config, read_entry(row)["entry"], reference)
    if before != after:
        raise TaskError(
            f"{PREFIX}{generator} is not supported: its entries do not survive JSON (its reference answer "
            f"scores {before:g} before and {after:g} after); choose another generator"
        )


def _summary(generator: str) -> str:
    doc = (_registry()[generator][0].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else "procedural problems"


@functools.lru_cache(maxsize=64)
def _max_trace_length(generator: str, config_key: str) -> int:
    config = json.loads(config_key)
    items = _items(generator, config, rg_seed(0))
    rows = [make_row(generator, config, next(items)) for _ in range(TRACE_SAMPLE)]
    with_reference = [row for row in rows if row["answer"] is not None]
    if not with_reference:
        return NO_REFERENCE_TRACE_LENGTH
    return max(len(trace(row)) for row in with_reference)


def _jsonable(value: Any) -> Any:
    """JSON for the values reasoning-gym puts in metadata besides JSON's (Fraction, numpy numbers, sets)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)
