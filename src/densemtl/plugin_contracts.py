"""What a plugin's objects give back, checked where densemtl first uses it: one line naming the plugin.

An architecture, method or task made by a plugin's factory (:func:`densemtl.plugin_faults.call_factory`)
is remembered here with the words that name it (``architecture 'p' of plugin 'plug' (plug.py:5)``)
and, for an architecture, the channels its heads were asked for. Its outputs are then checked
before densemtl's own code reads them: a forward that returns a tensor instead of a dict of
predictions, misses a task, or returns a prediction of the wrong size or channel count; a task's
loss that is not a scalar tensor; a method's weights or update of the wrong shape. densemtl's own
objects are not checked here (their bugs stay tracebacks), nor objects the user built and handed over
(a model or method given to :class:`~densemtl.engine.Engine` or ``Trainer``: the user's own code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from densemtl.errors import DenseMTLError
from densemtl.plugin_faults import _MADE, PluginError, failed
from densemtl.plugin_faults import note_made as note_made  # re-exported

R = TypeVar("R")


def maker(obj: object) -> str | None:
    """The words naming the plugin whose factory made ``obj``; None for anything else (densemtl's
    own objects, and objects the user built and handed over: those are the user's to check)."""
    try:
        made = _MADE.get(obj)
    except TypeError:
        made = None
    return made[0] if made is not None else None


def _channels(obj: object) -> dict[str, int] | None:
    try:
        made = _MADE.get(obj)
    except TypeError:
        return None
    return made[1] if made is not None else None


def _kind(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return "None" if value is None else f"a {type(value).__name__}"


def check_outputs(model: object, preds: object, batch: Mapping[str, Any], tasks: Sequence[str]) -> None:
    """A :class:`PluginError` when a user's model's forward did not return, for every task of
    ``tasks``, a (B, C, H, W) tensor at the image's size with the channels its head was asked for."""
    who = maker(model)
    if who is None:
        return
    image = batch.get("image")
    batched = isinstance(image, Tensor) and image.dim() == 4
    n, hw = (image.shape[0], tuple(image.shape[-2:])) if batched else (None, None)
    want = _channels(model) or {}
    expect = ", ".join(f"{t}: (B, {want[t]}, H, W)" if t in want else f"{t}: (B, C, H, W)" for t in tasks)
    if not isinstance(preds, Mapping):
        raise PluginError(f"{who}: forward returned {_kind(preds)}, not a dict of predictions by task ({expect})")
    missing = [t for t in tasks if t not in preds]
    if missing:
        raise PluginError(
            f"{who}: forward returned no prediction for task {', '.join(missing)} (it returned "
            f"{', '.join(map(str, preds)) or 'none'}; expected {expect})"
        )
    for t in tasks:
        p, target = preds[t], batch.get(t)
        # a dense task (its target at the image's size, or no target: predict) needs a (B, C, H, W) map
        dense = hw is not None and (not isinstance(target, Tensor) or tuple(target.shape[-2:]) == hw)
        good = isinstance(p, Tensor)
        if good and dense:
            shape = (n, want.get(t, p.shape[1] if p.dim() == 4 else -1), *hw)
            good = tuple(p.shape) == shape
        if not good:
            c = want.get(t, "C")
            size = f"({n}, {c}, {hw[0]}, {hw[1]}), the image's size" if dense and hw is not None else "a tensor"
            raise PluginError(f"{who}: forward returned {_kind(p)} for task {t!r}; expected {size}")


def check_loss(task: object, name: str, loss: object) -> None:
    """A :class:`PluginError` when a user's task's ``loss`` is not a scalar floating-point tensor."""
    if isinstance(loss, Tensor) and loss.dim() == 0 and loss.is_floating_point():
        return
    who = maker(task)
    if who is not None:
        raise PluginError(f"{who}: loss() returned {_kind(loss)}, not a scalar floating-point tensor")


def check_vector(method: object, call: str, value: object, length: int, given: Tensor | None = None) -> None:
    """A :class:`PluginError` when a user's method's ``call`` returned anything but a
    floating-point tensor of shape (``length``,), finite where what it was ``given`` is."""
    who = maker(method)
    if who is None:
        return
    if not (isinstance(value, Tensor) and value.is_floating_point() and tuple(value.shape) == (length,)):
        raise PluginError(f"{who}: {call} returned {_kind(value)}, not a floating-point tensor of shape ({length},)")
    finite_input = given is None or bool(torch.isfinite(given.detach()).all())
    if finite_input and not bool(torch.isfinite(value.detach()).all()):
        raise PluginError(f"{who}: {call} returned non-finite values ({value.detach().flatten()[:4].tolist()}…)")


def check_accumulator(task: object, acc: object) -> None:
    """A :class:`PluginError` when a plugin's task's ``accumulator`` made something without
    ``update(pred, target)`` and ``compute()``."""
    who = maker(task)
    if who is not None and not all(callable(getattr(acc, m, None)) for m in ("update", "compute")):
        raise PluginError(f"{who}: accumulator() returned {_kind(acc)}, not a metric accumulator "
                          "(an object with update(pred, target) and compute())")  # fmt: skip


def task_gap(task: object) -> str:
    """What a plugin's task lacks ("" when nothing): a ``primary`` metric whose direction
    ``lower_is_better`` declares (True or False)."""
    primary = getattr(task, "primary", None)
    lower = getattr(task, "lower_is_better", None)
    if not isinstance(primary, str) or not primary:
        return f"its 'primary' metric is {primary!r}, not a metric's name"
    if not isinstance(lower, Mapping) or not isinstance(lower.get(primary), bool):
        return (
            f"its 'lower_is_better' gives no direction (True or False) for its primary metric {primary!r}; "
            "best-epoch selection needs one"
        )
    return ""


def guarded(obj: object, call: str, fn: Callable[[], R]) -> R:
    """``fn()``, a call into a user's ``obj`` (its ``call``): an exception raised by it is a
    :class:`PluginError` naming the plugin and the line (densemtl's own objects: as raised)."""
    who = maker(obj)
    if who is None:
        return fn()
    try:
        return fn()
    except (DenseMTLError, MemoryError):
        raise  # the plugin's own one-line refusal
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; one line names it
        raise failed(f"{who}: {call}", e, type(obj).__module__) from None
