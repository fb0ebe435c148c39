"""The saved state of a run, checked before ``train --resume`` loads it (issue 21).

``load_state_dict`` of torch's optimizers and schedulers takes almost anything: a learning rate
``"fast"``, an Adam moment of the wrong shape or a scheduler key that shadows a method load
silently and fail many steps later with a traceback. Each part of ``checkpoints/last.pt`` is
therefore compared with the state the freshly built run has (:func:`check_like`), and the random
generators' state is tried on (:func:`check_rng`), before anything is loaded: a bad part is one
line naming the file and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densemtl.errors import ConfigError

#: What a part's own ``load_state_dict`` raises on a state that does not fit.
LOAD_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, AssertionError)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def damaged(where: Path, field: str, why: str) -> ConfigError:
    """The one line for a part of checkpoint ``where`` that cannot be resumed from."""
    return ConfigError(f"--resume: {where} holds a damaged {field!r} ({why}); it cannot be resumed from")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mismatch(value: object, like: object) -> str | None:
    """Why ``value`` is not of the kind of ``like`` (its fresh counterpart), or None."""
    if like is None:
        return None
    if isinstance(like, bool):
        return None if isinstance(value, bool) else f"a boolean expected, got {_short(value)}"
    if _number(like):
        if not _number(value) or (math.isfinite(like) and not math.isfinite(value)):  # type: ignore[arg-type]
            return f"a finite number expected, got {_short(value)}"
        if isinstance(like, int) and not float(value).is_integer():  # type: ignore[arg-type]
            return f"a whole number expected, got {_short(value)}"
        return None
    if isinstance(like, str):
        return None if isinstance(value, str) else f"text expected, got {_short(value)}"
    if isinstance(like, list | tuple):  # a tuple has its length (Adam's betas); a list may grow (a history)
        if not isinstance(value, list | tuple) or (isinstance(like, tuple) and len(value) != len(like)):
            return f"a list of {len(like)} expected, got {_short(value)}"
        return next((m for v, k in zip(value, like, strict=False) if (m := _mismatch(v, k))), None)
    if isinstance(like, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            return f"a tensor expected, got {_short(value)}"
        if like.is_floating_point() and not value.is_floating_point():
            return f"a floating-point tensor expected, got {value.dtype}"
        if value.shape != like.shape:
            return f"a tensor of shape {tuple(like.shape)} expected, got {tuple(value.shape)}"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return "it holds NaN or inf values"
        return None
    if isinstance(like, Mapping):
        if not isinstance(value, Mapping):
            return f"a mapping expected, got {_short(value)}"
        return next((f"{k}: {m}" for k in like if k in value and (m := _mismatch(value[k], like[k]))), None)
    return None


def check_like(saved: object, fresh: Mapping[str, Any], where: Path, field: str, extra: bool = True) -> None:
    """A one-line ConfigError unless ``saved`` is a mapping whose values have the kinds (type,
    shape, finiteness) of those of ``fresh``; keys ``fresh`` lacks are refused unless ``extra``."""
    if not isinstance(saved, Mapping):
        raise damaged(where, field, f"a mapping expected, got {_short(saved)}")
    if not all(isinstance(k, str) for k in saved):
        raise damaged(where, field, "its keys must be names")
    unknown = [k for k in saved if k not in fresh]
    if unknown and not extra:
        raise damaged(where, field, f"unknown entry {unknown[0]!r}")
    why = _mismatch(saved, fresh)
    if why:
        raise damaged(where, field, why)


def _check_torch_optimizer(saved: object, opt: torch.optim.Optimizer, where: Path, field: str) -> None:
    """``saved`` against torch optimizer ``opt``: its groups' settings and every parameter's state."""
    fresh = opt.state_dict()
    if not isinstance(saved, Mapping) or not isinstance(saved.get("param_groups"), list):
        raise damaged(where, field, "no 'param_groups' list")
    groups, state = saved["param_groups"], saved.get("state", {})
    if len(groups) != len(fresh["param_groups"]):
        raise damaged(where, field, f"{len(groups)} parameter groups, this run has {len(fresh['param_groups'])}")
    params: list[nn.Parameter] = [p for g in opt.param_groups for p in g["params"]]
    for i, (group, like) in enumerate(zip(groups, fresh["param_groups"], strict=True)):
        if not isinstance(group, Mapping) or not isinstance(group.get("params"), list):
            raise damaged(where, f"{field}.param_groups[{i}]", "a mapping with a 'params' list expected")
        if len(group["params"]) != len(like["params"]):
            raise damaged(where, f"{field}.param_groups[{i}]", "another number of parameters than this run's")
        settings = {k: v for k, v in like.items() if k != "params"}
        check_like({k: v for k, v in group.items() if k != "params"}, settings, where, f"{field}.param_groups[{i}]")
        lr = group.get("lr")
        if not _number(lr) or not 0 <= lr < math.inf:
            raise damaged(where, f"{field}.param_groups[{i}].lr", f"a finite number >= 0 expected, got {_short(lr)}")
    ids = [j for g in groups for j in g["params"]]
    if not isinstance(state, Mapping):
        raise damaged(where, f"{field}.state", f"a mapping expected, got {_short(state)}")
    for key, entry in state.items():
        if key not in ids or not isinstance(entry, Mapping):
            raise damaged(where, f"{field}.state", f"an entry {_short(key)} for no parameter of this run")
        param = params[ids.index(key)]
        for name, value in entry.items():
            like: object = param.detach() if name != "step" else None
            if name == "step":
                ok = (isinstance(value, torch.Tensor) and value.numel() == 1) or _number(value)
                why = None if ok else f"a step count expected, got {_short(value)}"
            else:
                why = _mismatch(value, like) if isinstance(value, torch.Tensor) else None
            if why:
                raise damaged(where, f"{field}.state[{key}].{name}", why)


def check_optimizer(saved: object, opt: torch.optim.Optimizer, where: Path, field: str) -> None:
    """A one-line ConfigError unless ``saved`` fits ``opt`` (one torch optimizer, or densemtl's
    OptimizerGroup of several, whose state names them)."""
    members = getattr(opt, "optimizers", None)
    if not isinstance(members, dict):
        _check_torch_optimizer(saved, opt, where, field)
        return
    states = saved.get("optimizers") if isinstance(saved, Mapping) else None
    if not isinstance(states, Mapping) or set(states) != set(members):
        found = sorted(states) if isinstance(states, Mapping) else "a single optimizer"
        raise damaged(where, field, f"it holds {found}, this run has {sorted(members)}")
    for name, member in members.items():
        _check_torch_optimizer(states[name], member, where, f"{field}.{name}")


def check_rng(rng: object, where: Path) -> None:
    """A one-line ConfigError unless ``rng`` is a generator state this process can set: it is
    tried on and the generators put back as they were."""
    from densemtl.training.resumable import rng_state, set_rng_state

    if not isinstance(rng, dict) or not all(k in rng for k in ("python", "numpy", "torch")):
        raise damaged(where, "rng", "the random generators' state is incomplete")
    now = rng_state()
    try:
        set_rng_state(rng)
    except (*LOAD_ERRORS, OverflowError) as e:
        raise damaged(where, "rng", f"{type(e).__name__}") from None
    finally:
        set_rng_state(now)


def check_scheduler(saved: object, sched: Any, where: Path, field: str) -> None:
    """A one-line ConfigError unless ``saved`` fits LR scheduler ``sched`` (torch's ``load_state_dict``
    sets every key as an attribute: one naming a method, ``step``, would replace it)."""
    check_like(saved, sched.state_dict(), where, field)
    assert isinstance(saved, Mapping)
    shadowing = [k for k in saved if k.startswith("__") or callable(getattr(sched, k, None))]
    if shadowing:
        raise damaged(where, field, f"entry {shadowing[0]!r} is not a setting of a scheduler")


def load_part(load: Callable[[Any], Any], saved: Any, where: Path, field: str) -> None:
    """``load(saved)``; what it raises on a state that does not fit is the one line of :func:`damaged`."""
    try:
        load(saved)
    except ConfigError as e:
        raise damaged(where, field, str(e)) from None
    except LOAD_ERRORS as e:
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise damaged(where, field, f"{type(e).__name__}: {first}" if first else type(e).__name__) from None


def check_elapsed(value: object, where: Path) -> float:
    """The saved training time in seconds (a finite number >= 0)."""
    if not _number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        raise damaged(where, "elapsed_s", f"a finite number of seconds expected, got {_short(value)}")
    return float(value)  # type: ignore[arg-type]
