"""Reading a GRPOConfig's values from text: YAML files (a key given twice is an error), CLI-style `key=value`
overrides (`a.b.c=v` inside a dict field), and the coercion of strings to each field's annotated type.
"""

from __future__ import annotations

import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from reasonrl.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of option: value in a YAML file; ConfigError (one line, with file:line:column) otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file '{path}': {getattr(error, 'strerror', None) or error}") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
        raise ConfigError(f"{where}: invalid YAML: {problem or error}".replace("\n", " ")) from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of option: value (got a "
                          f"{type(values).__name__}); see configs/ for examples")
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str] | tuple[str, ...],
                    names: list[str]) -> dict[str, Any]:
    """A copy of `values` with `key=value` strings applied; `a.b.c=v` sets a key inside a dict field. `names`:
    the fields a key may name."""
    result = dict(values)
    for override in overrides:
        key, sep, raw = override.partition("=")
        name, path = override_field(override), key.strip().split(".")[1:]
        if not sep or not name:
            raise ConfigError(f"override {override!r} is not key=value; write e.g. learning_rate=1e-5")
        if name not in names:
            raise ConfigError(f"override {override!r}: unknown config key {name!r}{did_you_mean(name, names)}", name)
        if not path:
            result[name] = raw
            continue
        current = result.get(name)
        current = parse_scalar(current) if isinstance(current, str) else current
        if not isinstance(current, (dict, type(None))):
            raise ConfigError(f"override {override!r}: {name} is not a mapping, so it has no key {path[0]!r}", name)
        container = result[name] = dict(current or {})
        for part in path[:-1]:
            if not isinstance(container.get(part) or {}, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a mapping", name)
            container[part] = dict(container.get(part) or {})
            container = container[part]
        container[path[-1]] = parse_scalar(raw)
    return result


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML would keep the last value
    silently, and a run would train with a setting its author thinks is something else."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null", "~")


def override_field(override: str) -> str:
    """The field an override sets: 'reward_kwargs.length.x=1' -> reward_kwargs; '--max-steps=5' -> max_steps."""
    return override.partition("=")[0].strip().lstrip("-").split(".")[0].replace("-", "_")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_scalar(text: str) -> Any:
    """A CLI/YAML scalar: YAML parsing, plus floats PyYAML reads as strings (1e-5)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def coerce(name: str, value: Any, hint: Any, type_text: str) -> Any:
    """`value` converted to the annotation `hint`, or a ConfigError naming the field and the expected type."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = list(typing.get_args(hint)) if is_union else [hint]
    if type(None) in options and (value is None or isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    if isinstance(value, str) and (value.strip().startswith("[") or "," in value):
        options.sort(key=lambda option: typing.get_origin(option) is not list)  # "a,b" is a list if one is allowed
    for option in options:
        try:
            return _convert(value, option)
        except (ValueError, TypeError, yaml.YAMLError):
            continue
    raise ConfigError(f"{name} must be {type_text} (got {value!r})", name)


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif hint is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                value = float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        number = float(value.strip() if isinstance(value, str) else value)
        if not math.isnan(number):
            return number
    elif hint is str:
        if isinstance(value, (str, os.PathLike)):  # output_dir=Path(...) from Python
            return os.fspath(value)
    elif origin is list:
        if isinstance(value, str):
            text = value.strip()
            value = yaml.safe_load(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(value, (list, tuple)):
            (item_hint,) = typing.get_args(hint) or (Any,)
            return [_convert(item, item_hint) for item in value]
    elif origin is dict or hint is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, dict):
            return dict(value)
    raise TypeError(f"cannot convert {value!r} to {hint}")
