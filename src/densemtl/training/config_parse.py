"""The values of flags and YAML keys that need parsing: sizes, task lists, module lists, key=value
knobs. Each bad value is a one-line :class:`~densemtl.errors.ConfigError` naming the flag."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from densemtl.errors import ConfigError
from densemtl.training.yaml_io import parse_yaml

#: The largest side ``--size`` takes: beyond it one batch of images alone outgrows any GPU.
MAX_SIDE = 8192
#: One side of a size written out: ASCII digits (a sign for a clearer "too small" message), no
#: underscores or other scripts' digits, which ``int()`` would take.
_DIGITS = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


def parse_size(value: Any, name: str = "--size") -> tuple[int, int]:
    """'HxW', 'H,W', [H, W] or an int -> (H, W); each side 16 .. :data:`MAX_SIDE`."""
    try:
        if isinstance(value, str):
            parts = value.lower().replace(",", "x").split("x")
            if not all(_DIGITS.fullmatch(p) for p in parts):  # int() takes "３２", "3_2" and " 32 " too
                raise ValueError(value)
            h, w = (int(p) for p in parts)
        elif isinstance(value, int | float):
            h = w = _side(value)
        else:
            h, w = (_side(v) for v in value)
    except _Fraction:
        raise ConfigError(f"{name} {value!r}: sides must be whole numbers of pixels (not truncated)") from None
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{name} {value!r} is not a size; write it as HxW, e.g. 96x128") from None
    if h < 16 or w < 16:
        raise ConfigError(f"{name} {value!r} is too small; both sides must be at least 16 pixels")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ConfigError(f"{name} {value!r} is too large; both sides must be at most {MAX_SIDE} pixels")
    return h, w


class _Fraction(ValueError):
    """A side with a fractional part."""


def _side(value: Any) -> int:
    """One side of a size: an int, or a float with no fraction (32.0); else ValueError (32.7
    is not truncated, True is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(value)
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise _Fraction(value)
    return int(value)


def parse_tasks(value: Any, name: str = "tasks") -> list[str]:
    """'seg,depth' or ['seg', 'depth'] -> ['seg', 'depth']: non-empty, no repeats (names are
    checked against the dataset's tasks when it is opened)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
        raise ConfigError(f"{name} must be a comma-separated list of task names, got {value!r}")
    out = [t.strip().lower() for t in items if t.strip()]
    if not out:
        raise ConfigError(f"{name} must name at least one task, got {value!r}")
    repeated = sorted({t for t in out if out.count(t) > 1})
    if repeated:
        raise ConfigError(f"{name} names {', '.join(repeated)} more than once")
    return out


def parse_imports(value: Any, name: str = "imports") -> list[str]:
    """'pkg.mod' or ['pkg.a', 'pkg.b'] -> the module names, in order, without repeats."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(m, str) for m in items):
        raise ConfigError(f"{name} must be a module name or a list of module names, got {value!r}")
    out: list[str] = []
    for m in (m.strip() for m in items):
        if m and m not in out:
            out.append(m)
    return out


def parse_value(text: str, flag: str = "--arch-arg") -> Any:
    """A knob value from the command line: YAML scalar semantics ('3' -> 3, 'true' -> True); text
    that is not YAML stays text; a list nested too deeply or a key given twice is a one-line error
    naming ``flag``."""
    try:
        return parse_yaml(text, flag)
    except ConfigError as e:
        if "is not valid YAML" not in str(e):
            raise  # nested too deeply, a key given twice
        return text


def parse_kv(items: list[str] | None, flag: str) -> dict[str, Any]:
    """['k=v', ...] -> {k: parsed v}; a malformed item is a one-line error naming the flag."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} must be key=value")
        out[key.strip().replace("-", "_")] = parse_value(value, f"{flag} {key.strip()}")
    return out


def parse_task_args(value: Any, name: str = "task_args") -> dict[str, dict[str, Any]]:
    """Per-task knobs: a mapping ``{task: {knob: value}}`` (YAML), or ``['edge:pos_weight=0.5', ...]``
    (``--task-arg TASK:KEY=VALUE``, repeatable); task names lowercased, dashes in knobs read as
    underscores. A malformed item is a one-line error naming ``name``."""
    if isinstance(value, list | tuple):
        out: dict[str, dict[str, Any]] = {}
        for item in value:
            task, sep, rest = str(item).partition(":")
            if not sep or not task.strip() or "=" not in rest:
                raise ConfigError(f"{name} {item!r} must be TASK:KEY=VALUE, e.g. edge:pos_weight=0.95")
            out.setdefault(task.strip().lower(), {}).update(parse_kv([rest], f"{name} {task.strip()}"))
        return out
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must map task names to mappings of knobs, got {value!r}")
    out = {}
    for task, knobs in value.items():
        if not isinstance(knobs, dict):
            raise ConfigError(f"{name}: task {task!r} must map knob names to values, got {knobs!r}")
        out[str(task).strip().lower()] = {str(k).replace("-", "_"): v for k, v in knobs.items()}
    return out


def coerce(name: str, value: Any, hint: Any, parse: Callable[[Any, str], Any] | None = None) -> Any:
    """``value`` of config key ``name`` as its declared type ``hint`` (a ``parse`` function of the
    spec reads it instead where there is one); None only where the hint is optional."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {name!r} cannot be empty")
    if parse is not None:
        return parse(value, name)
    base = (
        next((a for a in args if a is not type(None)), hint) if optional or isinstance(hint, types.UnionType) else hint
    )
    origin = typing.get_origin(base) or base
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r} must be a mapping of knobs, got {value!r}")
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} must be true or false, got {value!r}")
    if origin is int:
        value = _numeric_string(value, int)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if origin is float:
        value = _numeric_string(value, float)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
        return value
    return value


def _numeric_string(value: Any, kind: type) -> Any:
    """``value`` as a number of ``kind`` when it is a string that spells one (PyYAML reads an
    unquoted ``1e-3`` as a string: YAML 1.1 wants ``1.0e-3``); anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    if kind is int:
        try:
            return int(value.strip())
        except ValueError:
            return int(number) if number.is_integer() else value
    return number
