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
import logging
import math
import threading
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("reasonrl")


class RewardError(ValueError):
    """A reward function misbehaved (one line naming the function and the problem)."""


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

    @property
    def failed_fraction(self) -> float:
        return sum(self.errors.values()) / max(1, self.rewards_per_func.numel())


def call_reward(fn, name: str, prompts: list, completions: list, completion_ids: list, columns: dict,
                timeout: float | None = None) -> list:
    """One reward function on a round; checks the count and types of what it returns.

    Raises `RewardCallFailed` when the function raises or takes longer than `timeout` seconds, `RewardError` when
    what it returns breaks the contract.
    """
    values = _run(fn, name, dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns),
                  timeout)
    values = _as_list(values, name)
    if len(values) != len(completions):
        raise RewardError(f"reward function '{name}' returned {len(values)} values for {len(completions)} "
                          f"completions; it must return exactly one per completion")
    scores = []
    for value in values:
        if value is None:
            scores.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise RewardError(f"reward function '{name}' returned a {type(value).__name__} ({value!r:.50}); "
                              f"rewards must be floats or None")
        value = float(value)
        if math.isnan(value):
            raise RewardError(f"reward function '{name}' returned NaN; return None for a completion it cannot score")
        scores.append(value)
    return scores


def _run(fn, name: str, kwargs: dict, timeout: float | None):
    """fn(**kwargs), in a daemon thread when there is a timeout.

    A Python function cannot be stopped from outside, so a call that times out is abandoned: its thread keeps
    running in the background until the function returns (a daemon thread, so it never keeps the process alive),
    and whatever it returns then is discarded.
    """
    if timeout is None:
        try:
            return fn(**kwargs)
        except Exception as error:
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
    except Exception as error:
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
    """Rewards per function [B, F], NaN where a function returned None or its call failed."""
    per_func, errors, failures = [], {}, []
    for fn, name in zip(reward_funcs, names):
        try:
            per_func.append(call_reward(fn, name, prompts, completions, completion_ids, columns, timeout))
            errors[name] = 0
        except RewardCallFailed as failure:
            per_func.append([math.nan] * len(completions))
            errors[name] = len(completions)
            failures.append(failure)
    rewards_per_func = torch.tensor(per_func, dtype=torch.float32).T.reshape(len(completions), len(reward_funcs))
    return RoundScores(rewards_per_func, errors, failures)


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


def check_failures(scores: RoundScores, max_fraction: float) -> None:
    """RewardError when more than `max_fraction` of the round's values failed."""
    if not scores.failures or scores.failed_fraction <= max_fraction:
        return
    failed, total = sum(scores.errors.values()), scores.rewards_per_func.numel()
    raise RewardError(f"{scores.failures[0]}; {failed} of {total} reward values of this round failed "
                      f"({scores.failed_fraction:.0%}), more than max_reward_error_fraction={max_fraction:g}: fix the "
                      f"reward function, or raise max_reward_error_fraction to tolerate more failures")


def combine_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over functions [B, F] -> [B], NaN-aware; NaN where every function returned None."""
    combined = (rewards_per_func * weights[None]).nansum(dim=1)
    combined[torch.isnan(rewards_per_func).all(dim=1)] = math.nan
    return combined
