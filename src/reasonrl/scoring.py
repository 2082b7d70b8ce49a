"""Call the reward functions on a generation round and combine their scores, with TRL's semantics.

Each function returns one value per completion; None means "cannot score this one" and becomes NaN. The combined
reward is the weighted sum over functions, ignoring NaN, and is NaN only when every function returned None.

A call that raises or runs past `timeout` seconds is a transient failure, not a bug: all its values become NaN
(as if it had returned None for each) and are counted per function; `check_failures` stops the run when too many
of a round's values failed. A reward that breaks the contract (wrong count, wrong type, NaN) is a bug in the
reward: a `RewardError` at once.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import inspect
import logging
import math
import os
import threading
from dataclasses import dataclass, field

import torch

from reasonrl.errors import RewardError, RewardSpecError

logger = logging.getLogger("reasonrl")


class RewardCallFailed(Exception):
    """One call of a reward function raised (`error`) or timed out (`error` is None)."""

    def __init__(self, name: str, summary: str, error: BaseException | None = None):
        super().__init__(f"reward function '{name}' {summary}")
        self.name, self.summary, self.error = name, summary, error

    @property
    def kind(self) -> str:
        return "timeout" if self.error is None else type(self.error).__name__


@dataclass
class RoundScores:
    """A round's rewards per function [B, F] (NaN: unscorable) and the calls that failed."""

    rewards_per_func: torch.Tensor  # [B, F]
    errors: dict[str, int]  # function name -> values of this round that failed (raised or timed out)
    failures: list[RewardCallFailed] = field(default_factory=list)
    # what the rewards logged (TRL's log_metric / log_extra): name -> (sum, count); column -> one value per row
    logged_metrics: dict[str, tuple[float, int]] = field(default_factory=dict)
    logged_columns: dict[str, list] = field(default_factory=dict)

    @property
    def failed_fraction(self) -> float:
        return sum(self.errors.values()) / max(1, self.rewards_per_func.numel())


FLOAT32_MAX = 3.4028234663852886e38


class RewardLog:
    """TRL's `log_metric(name, value)` and `log_extra(column, values)`, given to every reward call by keyword.

    A metric's values are averaged over the round (and its processes) and logged under `name` with the round's
    other metrics; a column holds one value per completion and joins the logged completions (completions.jsonl,
    the printed samples, the trackers' completion tables). One RewardLog per call: what a call that failed logged
    is dropped with its values."""

    def __init__(self, name: str, num_completions: int):
        self.name, self.num_completions = name, num_completions
        self.metrics: dict[str, list[float]] = {}
        self.columns: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"log_metric({name!r}, {value!r:.40}): the value must be one number") from None
        self.metrics.setdefault(str(name), []).append(value)

    def log_extra(self, column: str, values: list) -> None:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != self.num_completions:
            raise ValueError(f"log_extra({column!r}, ...) needs one value per completion ({self.num_completions}), "
                             f"got {values!r:.60}")
        self.columns.setdefault(str(column), []).extend(list(values))

    def merge_into(self, metrics: dict, columns: dict) -> None:
        for name, values in self.metrics.items():
            total, count = metrics.get(name, (0.0, 0))
            metrics[name] = (total + sum(values), count + len(values))
        for column, values in self.columns.items():  # logged twice in a call (or by two rewards): the last wins
            columns[column] = values[-self.num_completions:]


def reward_arguments(prompts: list, completions: list, completion_ids: list, columns: dict,
                     log: RewardLog | None = None) -> dict:
    """The keyword arguments of one reward call: its own copies of the round's lists (a function that empties or
    edits `completions` cannot change what the next one or the count check sees), a copy of trainer_state (a
    reward cannot move the run's step counter), and `log`'s log_metric and log_extra."""
    shared = ("trainer_state", "environments")  # live objects: a copy of the state, the environments themselves
    arguments = copy.deepcopy(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                   **{key: value for key, value in columns.items() if key not in shared}))
    if "trainer_state" in columns:
        arguments["trainer_state"] = copy.copy(columns["trainer_state"])
    if "environments" in columns:  # TRL's: each completion's environment instance, to read its final state
        arguments["environments"] = list(columns["environments"])
    log = log or RewardLog("", len(completions))
    arguments.update(log_metric=log.log_metric, log_extra=log.log_extra)
    return arguments


def call_reward(fn, name: str, prompts: list, completions: list, completion_ids: list, columns: dict,
                timeout: float | None = None, log: RewardLog | None = None) -> list:
    """One (synchronous) reward function on a round; checks the count and types of what it returns.

    Raises `RewardCallFailed` when the function raises, calls sys.exit or os._exit, or takes longer than
    `timeout` seconds; `RewardError` when what it returns breaks the contract (a wrong count, a non-number, NaN, an
    infinity or a value float32 cannot hold).
    """
    arguments = reward_arguments(prompts, completions, completion_ids, columns, log)
    return checked_values(_run(fn, name, arguments, timeout), name, len(completions))


def checked_values(values, name: str, expected: int) -> list[float]:
    """A reward's return value as one float per completion (None -> NaN), or RewardError."""
    values = _as_list(values, name)
    if len(values) != expected:
        raise RewardError(f"reward function '{name}' returned {len(values)} values for {expected} "
                          f"completions; it must return exactly one per completion")
    return [_as_score(value, name) for value in values]


def _as_score(value, name: str) -> float:
    if value is None:
        return math.nan
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) == 0 and hasattr(value, "item"):
        value, shape = value.item(), None  # a 0-d numpy or torch number
    if shape is not None or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        # bools pass (1.0 / 0.0, as TRL's torch.tensor makes them); arrays of several values per completion do not
        returned = (f"a {type(value).__name__} of shape {tuple(shape)} per completion" if shape is not None
                    else f"a {type(value).__name__} ({value!r:.50})")
        raise RewardError(f"reward function '{name}' returned {returned}; rewards must be one float (or None) per "
                          f"completion")
    value = float(value)
    if math.isnan(value):
        raise RewardError(f"reward function '{name}' returned NaN; return None for a completion it cannot score")
    if not abs(value) <= FLOAT32_MAX:
        raise RewardError(f"reward function '{name}' returned {value:g}, which is not a finite float32; return "
                          f"finite rewards (e.g. a large penalty such as -100, not -inf)")
    return value


def _run(fn, name: str, kwargs: dict, timeout: float | None):
    """fn(**kwargs), in a daemon thread when there is a timeout.

    A Python function cannot be stopped from outside, so a call that times out is abandoned: its thread keeps
    running in the background until the function returns (a daemon thread, so it never keeps the process alive),
    and whatever it returns then is discarded.
    """
    if timeout is None:
        try:
            return fn(**kwargs)
        except (Exception, SystemExit) as error:  # SystemExit: sys.exit, or os._exit under ProcessExitGuard
            raise RewardCallFailed(name, _describe(error), error) from error
    future: concurrent.futures.Future = concurrent.futures.Future()

    def work():
        try:
            future.set_result(fn(**kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            future.set_exception(error)

    threading.Thread(target=work, name=f"reward-{name}", daemon=True).start()
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise RewardCallFailed(name, f"timed out after {timeout:g} s (reward_timeout)") from None
    except (Exception, SystemExit) as error:
        raise RewardCallFailed(name, _describe(error), error) from error


def _describe(error: BaseException) -> str:
    return f"raised {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def _as_list(values, name: str) -> list:
    if not isinstance(values, (str, bytes, dict)):  # these iterate, but not as one value per completion
        try:
            return list(values)
        except TypeError:
            pass
    returned = "None" if values is None else f"a {type(values).__name__} ({values!r:.50})"
    raise RewardError(f"reward function '{name}' returned {returned}; it must return a list with one float (or None) "
                      f"per completion")


def score_round(reward_funcs: list, names: list[str], prompts: list, completions: list, completion_ids: list,
                columns: dict, timeout: float | None = None) -> RoundScores:
    """Rewards per function [B, F], NaN where a function returned None or its call failed, and what the rewards
    logged. Synchronous functions run one after the other, then the `async def` ones concurrently on one event loop
    (as TRL: asyncio.gather), each under the same timeout (async_rewards.py)."""
    from reasonrl.async_rewards import call_async_rewards, is_async_callable

    count = len(completions)
    per_func: list = [None] * len(reward_funcs)
    errors, failures, metrics, logged_columns = {}, [], {}, {}
    logs = [RewardLog(name, count) for name in names]
    asynchronous = [i for i, fn in enumerate(reward_funcs) if is_async_callable(fn)]
    for i, (fn, name) in enumerate(zip(reward_funcs, names)):
        if i not in asynchronous:
            try:
                per_func[i] = call_reward(fn, name, prompts, completions, completion_ids, columns, timeout, logs[i])
            except RewardCallFailed as failure:
                per_func[i] = failure
    if asynchronous:
        calls = [(reward_funcs[i], names[i], reward_arguments(prompts, completions, completion_ids, columns, logs[i]))
                 for i in asynchronous]
        for i, result in zip(asynchronous, call_async_rewards(calls, timeout)):
            per_func[i] = result if isinstance(result, RewardCallFailed) else checked_values(result, names[i], count)
    for i, name in enumerate(names):
        errors[name] = 0
        if isinstance(per_func[i], RewardCallFailed):
            failures.append(per_func[i])
            per_func[i] = [math.nan] * count
            errors[name] = count
        else:
            logs[i].merge_into(metrics, logged_columns)
    rewards_per_func = torch.tensor(per_func, dtype=torch.float32).T.reshape(count, len(reward_funcs))
    return RoundScores(rewards_per_func, errors, failures, metrics, logged_columns)


def score_rollout(reward_funcs: list, names: list[str], rows: list[dict], rollout, num_generations: int,
                  trainer_state, timeout: float | None = None, warned: set | None = None) -> RoundScores:
    """Every reward function on a rollout's completions of `rows` (num_generations each), with TRL's call: prompts
    and dataset columns repeated per completion; completions as text, or as assistant messages for conversational
    prompts, or (with tools) each sample's assistant and tool messages. With `warned`, TRL's warning about a
    completion no reward function scored (warn_unscorable), once: "unscorable" is then added to `warned`."""
    from reasonrl.data import is_conversational

    prompts = [row["prompt"] for row in rows]
    repeated_prompts = [prompt for prompt in prompts for _ in range(num_generations)]
    if rollout.prompts is not None:  # an environment's observation joined each completion's prompt
        repeated_prompts = rollout.prompts
    completions = ([[{"role": "assistant", "content": text}] for text in rollout.texts]
                   if is_conversational(prompts[0]) else rollout.texts)
    if rollout.messages is not None:
        completions = rollout.messages
    ids_list = [ids[mask.bool()].tolist() for ids, mask in zip(rollout.completion_ids, rollout.completion_mask)]
    columns = {key: [row[key] for row in rows for _ in range(num_generations)] for key in rows[0] if key != "prompt"}
    columns.update({key: value for key, value in (rollout.reward_columns or {}).items()
                    if key not in ("prompt", "completion", "completion_ids")})  # as TRL, these are not passed
    columns["trainer_state"] = trainer_state
    scores = score_round(reward_funcs, names, repeated_prompts, completions, ids_list, columns, timeout=timeout)
    if warned is not None and "unscorable" not in warned and warn_unscorable(scores.rewards_per_func,
                                                                             repeated_prompts, completions, columns):
        warned.add("unscorable")
    return scores


def log_failures_once(scores: RoundScores, seen: set) -> None:
    """A warning (with the traceback) for the first failure of each (function, exception type); `seen` remembers."""
    for failure in scores.failures:
        key = (failure.name, failure.kind)
        if key in seen:
            continue
        seen.add(key)
        logger.warning("%s; its values count as unscorable (None) this round. Later %s failures of this function "
                       "are only counted (metric rewards/%s/errors)", failure, failure.kind, failure.name,
                       exc_info=failure.error)


def warn_unscorable(rewards_per_func: torch.Tensor, prompts: list, completions: list, columns: dict) -> bool:
    """TRL's warning when every reward function returned None (or failed) for a completion, whose advantage is then
    0: the first such completion's prompt, completion and dataset columns. True when it warned."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1).nonzero()
    if unscorable.numel() == 0:
        return False
    i = int(unscorable[0])
    row = {key: values[i] for key, values in columns.items() if key != "trainer_state"}
    row.update(prompt=prompts[i], completion=completions[i])
    logger.warning("All reward functions returned None for the following kwargs: %s; a completion no reward function "
                   "scores gets advantage 0 and teaches nothing: make at least one reward function return a number "
                   "for it (warned once per run)", row)
    return True


def check_failures(scores: RoundScores, max_fraction: float) -> None:
    """RewardError when more than `max_fraction` of the round's values failed."""
    if not scores.failures or scores.failed_fraction <= max_fraction:
        return
    failed, total = sum(scores.errors.values()), scores.rewards_per_func.numel()
    raise RewardError(f"{scores.failures[0]}; {failed} of {total} reward values of this round failed "
                      f"({scores.failed_fraction:.0%}), more than max_reward_error_fraction={max_fraction:g}: fix the "
                      f"reward function, or raise max_reward_error_fraction to tolerate more failures")


def combine_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor,
                    names: list[str] | None = None) -> torch.Tensor:
    """Weighted sum over functions [B, F] -> [B], NaN-aware; NaN where every function returned None.

    A sum past float32's range is a RewardError (it would give every advantage of its group 0 or NaN)."""
    combined = (rewards_per_func * weights[None]).nansum(dim=1)
    if torch.isinf(combined).any():
        raise RewardError(f"the weighted sum of the rewards ({', '.join(names or [])}) overflows float32 "
                          f"(|value| > 3.4e38); scale the rewards or reward_weights down")
    combined[torch.isnan(rewards_per_func).all(dim=1)] = math.nan
    return combined


class ProcessExitGuard:
    """While active, os._exit raises SystemExit instead of ending the process at once: a reward function (or a
    library it calls) that calls it fails that call like any exception, where it would otherwise end the run with
    no message and no checkpoint. sys.exit already raises SystemExit, which call_reward catches."""

    def __enter__(self):
        self._exit = os._exit

        def refuse(code=0):
            raise SystemExit(f"os._exit({code}) called during training")

        os._exit = refuse
        return self

    def __exit__(self, *exc) -> None:
        os._exit = self._exit


CALL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""What every reward call passes by keyword, besides the dataset's columns (TRL's convention)."""


def check_reward_columns(reward_funcs: list, names: list[str], columns: list[str],
                         what: str = "the training data") -> None:
    """RewardSpecError when a reward cannot take TRL's call (it would fail on every round): a function without
    **kwargs that does not name every argument passed, or a built-in reward needing a dataset column the training
    data lacks. Rewards say what they read with `required_columns` (all of them) or `answer_columns` (any one)."""
    for fn, name in zip(reward_funcs, names):
        if not callable(fn):
            raise RewardSpecError(f"reward {fn!r} is not callable; pass a function, a registered name or a spec "
                                  f"like module:function")
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # a builtin or C function without a signature: let the call tell
            parameters = None
        if parameters is not None and not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            passed = [*CALL_ARGUMENTS, *(c for c in columns if c != "prompt")]
            unnamed = [argument for argument in passed if argument not in parameters]
            if unnamed:
                raise RewardSpecError(f"reward '{name}' takes ({', '.join(parameters)}) but is called with "
                                      f"{', '.join(passed)} (TRL's convention, by keyword); add **kwargs to its "
                                      f"parameters")
        target = fn.func if isinstance(fn, functools.partial) else fn
        required = [c for c in getattr(target, "required_columns", ()) if c not in columns]
        any_of = getattr(target, "answer_columns", ())
        if required or (any_of and not set(any_of) & set(columns)):
            wanted = " and ".join(repr(c) for c in required) if required else " or ".join(map(repr, any_of))
            raise RewardSpecError(f"reward '{name}' reads the dataset column {wanted}, which {what} "
                                  f"lacks (columns: {', '.join(columns)}); add or rename that column (and keep "
                                  f"remove_unused_columns=false)")


def build_rewards(reward_funcs, args, processing_classes=None,
                  device=None) -> tuple[list, list[str], torch.Tensor, list]:
    """(functions, names, weights [F], processing classes) of a trainer's reward_funcs: callables, built-in names,
    "module:function" specs, reward models (a PreTrainedModel, or a hub id or folder: reward_models.py), alone or in
    a list; a name's options from reward_kwargs, the weights from reward_weights (default 1). `processing_classes`:
    TRL's reward_processing_classes, one tokenizer (or None) per reward, used by the reward models; the list returned
    holds each reward model's tokenizer (given, or loaded with it) and None for the functions, as TRL's attribute."""
    from reasonrl.reward_models import RewardModel, is_model, looks_like_reward_model, reward_model
    from reasonrl.rewards import get_reward, reward_name

    if reward_funcs is None:  # TRL: optional when an environment owns the reward (environments.py)
        reward_funcs = []
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if processing_classes is None:
        processing_classes = [None] * len(funcs)
    elif not isinstance(processing_classes, (list, tuple)):
        processing_classes = [processing_classes]
    if len(processing_classes) != len(funcs):
        raise RewardSpecError(f"reward_processing_classes: the number of reward processing classes "
                              f"({len(processing_classes)}) must match the number of reward functions ({len(funcs)}) "
                              f"(TRL's rule); give one per reward function, None for the functions")
    reward_kwargs = args.reward_kwargs or {}
    for i, (f, tokenizer) in enumerate(zip(funcs, processing_classes)):
        if is_model(f) or isinstance(f, str) and looks_like_reward_model(f):
            funcs[i] = reward_model(f, tokenizer, args, device)
        elif isinstance(f, str):
            funcs[i] = get_reward(f, **reward_kwargs.get(f, {}))
    names = [reward_name(f) for f in funcs]
    if funcs or args.reward_weights is not None:  # none at all: the trainer checks once environments are known
        args.check_reward_weights(len(funcs))
    weights = args.reward_weights or [1.0] * len(funcs)
    tokenizers = [f.tokenizer if isinstance(f, RewardModel) else None for f in funcs]
    return funcs, names, torch.tensor(weights, dtype=torch.float32), tokenizers
