"""Dense prediction tasks: ``get(name)``, ``available()`` and ``register``.

A task is one :class:`~densemtl.tasks.base.Task` subclass registered under its name, the key of
its targets in batches and of its predictions in model outputs. A new task is one module here
(or in the user's own code) decorated with ``@register("name")`` (which sets its ``name``), and
a name in :data:`BUILT_IN` below: the module is imported when the task is first looked up. Three
of the built-in tasks: ``seg`` (segmentation, targets (B,H,W) long, -1 = ignore), ``depth``
((B,1,H,W), 0 = invalid), ``normal`` ((B,3,H,W), all-zero = invalid).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.registry import Registry
from densemtl.tasks.base import Column, MetricAccumulator, Task

TASKS: Registry[Task] = Registry("task")
register = TASKS.register

#: The NYUv2 task set and class count that ``models.create(name)`` builds for by default.
_DEFAULT_TASKS: tuple[str, ...] = ("seg", "depth", "normal")
_DEFAULT_CLASSES = 13


def available() -> list[str]:
    """The registered task names, sorted."""
    return TASKS.available()


def get(name: str, **knobs: Any) -> Task:
    """A ready instance of task ``name`` with ``knobs`` (a dataset's ``task_args``, e.g. NYUD's edge
    tolerance); an unknown name or knob is a ConfigError listing the valid ones."""
    from densemtl.plugin_contracts import task_gap
    from densemtl.plugin_faults import call_factory  # a plugin's failure: one line naming it

    cls = TASKS.get(name)
    try:
        return call_factory("task", TASKS.canonical(name), cls, knobs, Task, check=task_gap)
    except TypeError as e:
        raise ConfigError(f"task {name!r}: {e}") from None


def task_channels(tasks: Iterable[str], num_classes: int) -> dict[str, int]:
    """Output channels of each task's head, in the order of ``tasks``; a task (a plugin's) whose
    ``channels`` is not a whole number >= 1 is a one-line error naming it."""
    from densemtl.plugin_contracts import guarded, maker

    out: dict[str, int] = {}
    for t in tasks:
        task = get(t)
        c = guarded(task, "channels()", lambda task=task: task.channels(num_classes))  # type: ignore[misc]
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"{maker(task) or f'task {t!r}'}: channels({num_classes}) returned {c!r}, not a "
                              "number of channels >= 1")  # fmt: skip
        out[t] = c
    return out


def default_task_channels() -> dict[str, int]:
    """The NYUv2 heads (13 classes, depth, normals): the default of ``models.create``."""
    return task_channels(_DEFAULT_TASKS, _DEFAULT_CLASSES)


def compute_losses(preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: Iterable[str]) -> dict[str, Tensor]:
    """One scalar loss per task, in the order of ``tasks`` (a user's task whose loss raises or is
    not a scalar: one line naming it)."""
    from densemtl.plugin_contracts import check_loss, guarded

    out: dict[str, Tensor] = {}
    for t in tasks:
        task = get(t)
        out[t] = guarded(task, "loss()", lambda task=task, t=t: task.loss(preds[t], batch[t]))  # type: ignore[misc]
        check_loss(task, t, out[t])
    return out


#: The tasks of this package, each registered by the module of its name (one file = one task).
BUILT_IN = ("depth", "edge", "normal", "parts", "saliency", "seg")
for _name in BUILT_IN:
    TASKS.lazy(_name, f"{__name__}.{_name}")

__all__ = [
    "BUILT_IN",
    "TASKS",
    "Column",
    "MetricAccumulator",
    "Task",
    "available",
    "compute_losses",
    "default_task_channels",
    "get",
    "register",
    "task_channels",
]
