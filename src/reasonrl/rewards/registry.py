"""Find a reward function by name: a registered built-in, `module.sub:function` or `path/to/file.py:function`.

User code runs only when it is named here: `get_reward` imports a module or executes a file at the moment it
is asked to, never at import time of reasonrl.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from reasonrl.errors import RewardSpecError
from reasonrl.rewards.accuracy import accuracy_reward
from reasonrl.rewards.code import make_code_tests_reward
from reasonrl.rewards.format import format_reward, tag_count_reward
from reasonrl.rewards.length import make_length_reward
from reasonrl.rewards.overlong import make_soft_overlong_punishment

RewardFunc = Callable[..., list[float | None]]
"""`fn(prompts, completions, completion_ids, **dataset_columns) -> list[float | None]`, called by keyword."""


def _fixed(reward: RewardFunc) -> Callable[[], RewardFunc]:
    """A factory for a built-in that takes no options."""

    def factory() -> RewardFunc:
        return reward

    return factory


def _reasoning_gym() -> RewardFunc:
    """The score of rows made by an rg:NAME task (their `rg_entry` column names the generator and its config)."""
    from reasonrl.tasks.reasoning_gym import ENTRY_COLUMN, verify
    from reasonrl.tasks.task import make_reward

    return make_reward("reasoning_gym", verify, (ENTRY_COLUMN,))


# Canonical name -> factory(**options). `<name>_reward` and dashes (`tag-count`) are accepted as aliases.
_FACTORIES: dict[str, Callable[..., RewardFunc]] = {
    "accuracy": _fixed(accuracy_reward),
    "code_tests": make_code_tests_reward,
    "format": _fixed(format_reward),
    "length": make_length_reward,
    "reasoning_gym": _reasoning_gym,
    "soft_overlong_punishment": make_soft_overlong_punishment,
    "tag_count": _fixed(tag_count_reward),
}


def available_rewards() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(_FACTORIES)


def _how_to_name() -> str:
    names = ", ".join(available_rewards())
    return f"use a registered name: {names}, or module:function / path/to/file.py:function"


def get_reward(name_or_spec: str | Callable[..., Any], **kwargs: Any) -> RewardFunc:
    """The reward function that `name_or_spec` names, built with `kwargs`.

    - a registered name (`accuracy`, `code_tests`, `format`, `length`, `reasoning_gym` (rows of an rg:NAME task,
      scored by the generator's verifier), `soft_overlong_punishment`, `tag_count`, or with `_reward` appended):
      kwargs are its options, e.g. `get_reward("length", ideal_length=30)`,
      `get_reward("soft_overlong_punishment", max_completion_len=512, soft_punish_cache=128)`,
      `get_reward("code_tests", timeout=5, mode="fraction")`;
    - `package.module:function`, or TRL's dotted `package.module.function`: imported;
    - `path/to/file.py:function`: the file is executed as a module (relative to the current directory);
    - a callable: returned as it is.
    For a user function, kwargs are bound with functools.partial; for a user class, they construct an
    instance. Anything that does not give a callable raises RewardSpecError.
    """
    if callable(name_or_spec):
        return functools.partial(name_or_spec, **kwargs) if kwargs else name_or_spec
    if not isinstance(name_or_spec, str) or not name_or_spec.strip():
        raise RewardSpecError(f"reward {name_or_spec!r} is not a name or a spec ({_how_to_name()})")
    spec = name_or_spec.strip()
    key = spec.lower().replace("-", "_").removesuffix("_reward")
    if key in _FACTORIES:
        return _build_registered(spec, _FACTORIES[key], kwargs)
    if ":" in spec:
        location, attribute = spec.rsplit(":", 1)
    elif spec.endswith(".py"):
        raise RewardSpecError(
            f"reward '{spec}' names a file but no function in it; write '{spec}:function_name'"
        )
    elif "." in spec:
        location, attribute = spec.rsplit(".", 1)
    else:
        close = difflib.get_close_matches(key, available_rewards(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RewardSpecError(f"reward '{spec}' is not a registered name; {hint}({_how_to_name()})")
    if not attribute or not location:
        raise RewardSpecError(
            f"reward '{spec}' is incomplete; write module:function or path/to/file.py:function"
        )
    module = _import(spec, location)
    return _build_user(spec, module, attribute, kwargs)


def _build_registered(spec: str, factory: Callable[..., RewardFunc], options: dict[str, Any]) -> RewardFunc:
    signature = inspect.signature(factory).parameters
    parameters = list(signature)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        takes = f"its options: {', '.join(parameters)}" if parameters else "it takes none"
        raise RewardSpecError(f"reward '{spec}' has no option {', '.join(unknown)} ({takes})")
    missing = [name for name, p in signature.items() if p.default is inspect.Parameter.empty and name not in options]
    if missing:
        example = ", ".join(f"{name}: ..." for name in missing)
        raise RewardSpecError(f"reward '{spec}' needs the option {', '.join(missing)}; set reward_kwargs: "
                              f"{{{spec}: {{{example}}}}}")
    try:
        return factory(**options)
    except (ValueError, TypeError) as error:  # the factories check their options' values and types
        raise RewardSpecError(f"reward '{spec}' got a bad option: {error}") from error


def _import(spec: str, location: str) -> ModuleType:
    """The module at `location`: a file path if it ends in .py or has a slash, else a dotted module name."""
    try:
        if location.endswith(".py") or "/" in location or "\\" in location:
            return _load_file(spec, Path(location).expanduser())
        return importlib.import_module(location)
    except RewardSpecError:
        raise
    except (Exception, SystemExit) as error:
        reason = str(error) if isinstance(error, ImportError) else f"{type(error).__name__}: {error}"
        reason = " ".join(reason.split())  # one line, whatever the exception says
        raise RewardSpecError(
            f"reward '{spec}' could not be imported: {reason} ({_how_to_name()})"
        ) from error


def _load_file(spec: str, path: Path) -> ModuleType:
    """Execute the Python file at `path` as a module, once per path (later calls reuse it)."""
    path = path.resolve()
    if not path.is_file():
        raise RewardSpecError(
            f"reward '{spec}' could not be imported: no file {path} (relative paths start at the current "
            "directory; fix the path)"
        )
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_reasonrl_reward_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardSpecError(f"reward '{spec}' could not be imported: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running so that pickling, dataclasses and typing inside the file find the module.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _where(module: ModuleType) -> str:
    """How to name a module in a message: its file when loaded from a path, else its import name."""
    if module.__name__.startswith("_reasonrl_reward_") and getattr(module, "__file__", None):
        return str(module.__file__)
    return f"'{module.__name__}'"


def _build_user(spec: str, module: ModuleType, attribute: str, options: dict[str, Any]) -> RewardFunc:
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            defined = sorted(
                name
                for name, value in vars(module).items()
                if callable(value)
                and not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            )
            shown = ", ".join(defined[:12]) + (", ..." if len(defined) > 12 else "")
            found = f"callables there: {shown}" if defined else "it defines no public callables"
            raise RewardSpecError(
                f"reward '{spec}' not found: {_where(module)} has no '{attribute}' ({found})"
            )
        target = getattr(target, part)
    if not callable(target):
        raise RewardSpecError(
            f"reward '{spec}' is not callable: '{attribute}' is a {type(target).__name__}; "
            "point the spec at a reward function"
        )
    if isinstance(target, type):
        try:
            target = target(**options)
        except Exception as error:
            raise RewardSpecError(
                f"reward '{spec}' could not be constructed: {type(error).__name__}: {error}"
            ) from error
        if not callable(target):
            raise RewardSpecError(
                f"reward '{spec}' is a class whose instances are not callable; define __call__"
            )
        return target
    return functools.partial(target, **options) if options else target


def reward_name(reward: Callable[..., Any]) -> str:
    """The name a reward is logged under (`rewards/<name>/mean`): its `__name__`, the wrapped function's for a
    functools.partial, or the class name for a callable object."""
    while isinstance(reward, functools.partial):
        reward = reward.func
    name = getattr(reward, "__name__", None)
    return name if isinstance(name, str) and name else type(reward).__name__
