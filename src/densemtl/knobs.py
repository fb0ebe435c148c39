"""Checking a factory's keyword arguments (its knobs) before it is called, and did-you-mean.

What every registry checks before it calls a factory (:func:`check_call`): each key one of its
knobs, of its default's type, every argument without a default given. Below the registries and
:mod:`densemtl.plugin_faults`, which both call it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from densemtl.errors import ConfigError


def did_you_mean(name: object, valid: Iterable[object]) -> str:
    """``" (did you mean 'x'?)"`` naming the closest of ``valid`` to ``name``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(name).lower(), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_call(kind: str, name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """A one-line ConfigError unless ``factory(**kwargs)`` binds to its signature: each key one of
    its knobs (did-you-mean and the valid ones otherwise), of the default's type, and every
    argument without a default given. A factory whose signature cannot be read is not checked."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = {k: p for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        for key in kwargs:
            if key not in valid:
                # knobs are the keywords with defaults; the others (task_channels, split) are the caller's
                listing = ", ".join(k for k, p in valid.items() if p.default is not p.empty) or "none"
                raise ConfigError(f"{kind} {name!r} has no knob {key!r}{did_you_mean(key, valid)}; valid: {listing}")
        for key, value in kwargs.items():
            check_knob_type(kind, name, key, value, valid[key].default)
    try:
        sig.bind(**kwargs)
    except TypeError as e:  # an argument without a default not given
        raise ConfigError(f"{kind} {name!r}: {e}") from None


def check_knob_type(kind: str, name: str, key: str, value: Any, default: Any) -> None:
    """A knob whose default is a bool, int, float or str must get a value of that type."""
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    if isinstance(value, list | tuple | dict):  # per-task values of a scalar knob are the method's to check
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise ConfigError(
            f"{kind} {name!r} knob {key!r} must be a {type(default).__name__} (default {default!r}), got {value!r}"
        )
