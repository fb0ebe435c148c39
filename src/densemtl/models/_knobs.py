"""Checks of architecture knobs: each raises a one-line ``ConfigError`` naming the model and knob."""

from __future__ import annotations

import math
from collections.abc import Sequence

from densemtl.errors import ConfigError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_choice(arch: str, knob: str, value: object, choices: Sequence[object]) -> None:
    """``value`` must be one of ``choices``."""
    if not any(type(value) is type(c) and value == c for c in choices):
        listing = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{arch} knob {knob!r} must be one of {listing}, got {value!r}")


def check_positive_int(arch: str, knob: str, value: object) -> int:
    """``value`` as a positive int."""
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ConfigError(f"{arch} knob {knob!r} must be a positive integer, got {value!r}")
    return value  # type: ignore[return-value]


def check_positive_ints(arch: str, knob: str, value: object) -> tuple[int, ...]:
    """``value`` (a non-empty list or tuple of positive ints) as a tuple."""
    if not isinstance(value, list | tuple) or not value or not all(_is_int(v) and v >= 1 for v in value):
        raise ConfigError(f"{arch} knob {knob!r} must be a non-empty list of positive integers, got {value!r}")
    return tuple(value)


def check_positive_number(arch: str, knob: str, value: object) -> float:
    """``value`` as a positive (finite or not) number."""
    if not _is_number(value) or not value > 0:  # type: ignore[operator]
        raise ConfigError(f"{arch} knob {knob!r} must be a positive number, got {value!r}")
    return value  # type: ignore[return-value]


def check_finite_nonnegative(arch: str, knob: str, value: object) -> float:
    """``value`` as a finite number >= 0."""
    if not _is_number(value) or not value >= 0 or math.isinf(value):  # type: ignore[operator,arg-type]
        raise ConfigError(f"{arch} knob {knob!r} must be a finite number >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_unit_interval(arch: str, knob: str, value: object) -> float:
    """``value`` as a number in [0, 1]."""
    if not _is_number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        raise ConfigError(f"{arch} knob {knob!r} must be a number in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_bool(arch: str, knob: str, value: object) -> bool:
    """``value`` as a bool (true or false in YAML)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{arch} knob {knob!r} must be true or false, got {value!r}")
    return value
