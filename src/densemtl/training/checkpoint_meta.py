"""The fields of a checkpoint (``.pt``) or an export's metadata (``.safetensors``), checked before use.

Every field densemtl reads from such a file is typed and range-checked with the rules the
command line applies to the same values, before a model is built or a tensor allocated: a bad
one is a one-line :class:`~densemtl.errors.ConfigError` naming the file and the field.

- ``config``: a mapping (its keys are then checked as a config: :func:`build_config`);
- ``tasks``: a non-empty list of task names without repeats;
- ``num_classes``: an integer in 1 .. :data:`~densemtl.training.config_checks.MAX_CLASSES`;
- ``size``: null or [height, width], whole numbers 16 .. 8192 (``--size``'s range);
- ``epoch``, ``step``: integers >= 0; ``elapsed_s``: a finite number >= 0;
- ``arch``: null or a name; ``history``: a list of epoch records (``epoch`` >= 0, ``val`` a mapping);
- ``model``: a mapping of parameter names to tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from densemtl.errors import ConfigError
from densemtl.training.config_checks import MAX_CLASSES
from densemtl.training.config_parse import MAX_SIDE


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str | Path, field: str, rule: str, value: object) -> ConfigError:
    return ConfigError(f"checkpoint {where}: {field!r} must be {rule}, got {_short(value)}")


def _check_size(where: str | Path, size: object) -> None:
    if size is None:
        return
    rule = f"null or [height, width], whole numbers {16}..{MAX_SIDE}"
    if not isinstance(size, list | tuple) or len(size) != 2:
        raise _bad(where, "size", rule, size)
    for side in size:
        whole = _is_int(side) or (isinstance(side, float) and math.isfinite(side) and side.is_integer())
        if not whole or not 16 <= side <= MAX_SIDE:  # type: ignore[operator]
            raise _bad(where, "size", rule, size)


def _check_history(where: str | Path, history: object) -> None:
    if history is None:
        return
    rule = "a list of epoch records ({epoch: integer >= 0, val: {...}, ...})"
    if not isinstance(history, list):
        raise _bad(where, "history", rule, history)
    for rec in history:
        ok = isinstance(rec, Mapping) and _is_int(rec.get("epoch")) and rec["epoch"] >= 0
        if not ok or not isinstance(rec.get("val"), Mapping):
            raise _bad(where, "history", rule, rec)


def check_state_fields(state: Mapping[str, Any], where: str | Path) -> None:
    """A one-line ConfigError naming ``where`` and the field unless every field of checkpoint
    ``state`` that densemtl reads is of its type and in its range (see the module docstring)."""
    config = state.get("config")
    if "config" in state and not isinstance(config, Mapping):
        raise ConfigError(f"checkpoint {where}: 'config' must be a mapping, got {type(config).__name__}")
    if isinstance(config, Mapping) and not all(isinstance(k, str) for k in config):
        raise ConfigError(f"checkpoint {where}: 'config' must map key names to values")
    if "tasks" in state:
        tasks = state["tasks"]
        if not isinstance(tasks, list | tuple) or not tasks or not all(isinstance(t, str) for t in tasks):
            raise ConfigError(f"checkpoint {where}: 'tasks' must be a list of task names, got {_short(tasks)}")
        if len(set(tasks)) != len(tasks):
            raise _bad(where, "tasks", "a list of task names without repeats", tasks)
    if "num_classes" in state:
        classes = state["num_classes"]
        if not _is_int(classes) or not 1 <= classes <= MAX_CLASSES:
            raise _bad(where, "num_classes", f"an integer in 1..{MAX_CLASSES}", classes)
    _check_size(where, state.get("size"))
    for field in ("epoch", "step"):
        if field in state and (not _is_int(state[field]) or state[field] < 0):
            raise _bad(where, field, "an integer >= 0", state[field])
    if "elapsed_s" in state:
        t = state["elapsed_s"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < math.inf:
            raise _bad(where, "elapsed_s", "a finite number >= 0", t)
    if state.get("arch") is not None and not isinstance(state["arch"], str):
        raise _bad(where, "arch", "null or an architecture name", state["arch"])
    _check_history(where, state.get("history"))
    weights = state.get("model")
    if "model" in state and (
        not isinstance(weights, Mapping)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())
    ):
        raise ConfigError(f"checkpoint {where}: 'model' must map parameter names to tensors")
