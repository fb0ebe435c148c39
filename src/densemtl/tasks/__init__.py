"""Dense prediction tasks: ``register``, ``available()``, ``create(name)`` and :class:`TaskSet`.

A task is one :class:`~densemtl.tasks.base.Task` subclass registered under its name, the key of
its targets in batches and of its predictions in model outputs. A new task is one module here
(or in the user's own code) decorated with ``@register("name")`` (which sets its ``name``), and
a name in :data:`BUILT_IN` below: the module is imported when the task is first looked up. Three
of the built-in tasks: ``seg`` (segmentation, targets (B,H,W) long, -1 = ignore), ``depth``
((B,1,H,W), 0 = invalid), ``normal`` ((B,3,H,W), all-zero = invalid). A run's tasks, configured
with their knobs, are one :class:`TaskSet`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from densemtl.tasks.base import TASKS, Column, MetricAccumulator, Task
from densemtl.tasks.taskset import TaskSet, as_task_set, task_knobs

register = TASKS.register

#: The NYUv2 task set and class count that ``models.create(name)`` builds for by default.
_DEFAULT_TASKS: tuple[str, ...] = ("seg", "depth", "normal")
_DEFAULT_CLASSES = 13


def available() -> list[str]:
    """The registered task names, sorted."""
    return TASKS.available()


def create(name: str, **knobs: Any) -> Task:
    """Task ``name`` with ``knobs`` on its own (a one-task :class:`TaskSet`); an unknown name or
    knob is a ConfigError listing the valid ones. A run builds all its tasks once, as a TaskSet."""
    key = TASKS.canonical(name)
    return TaskSet([key], {key: knobs}, source="tasks.create")[key]


def get(name: str, **knobs: Any) -> Task:
    """Deprecated: :func:`create` (``Registry.get`` gives a factory; this gave an instance)."""
    import warnings

    warnings.warn("densemtl.tasks.get is deprecated: use densemtl.tasks.create or a TaskSet", DeprecationWarning, 2)
    return create(name, **knobs)


def task_channels(tasks: TaskSet | Iterable[str], num_classes: int) -> dict[str, int]:
    """Output channels of each task's head, in the order of ``tasks`` (names: their default
    tasks); see :meth:`TaskSet.channels`."""
    return as_task_set(tasks).channels(num_classes)


def default_task_channels() -> dict[str, int]:
    """The NYUv2 heads (13 classes, depth, normals): the default of ``models.create``."""
    return task_channels(_DEFAULT_TASKS, _DEFAULT_CLASSES)


def compute_losses(
    preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: TaskSet | Iterable[str]
) -> dict[str, Tensor]:
    """One scalar loss per task, in the order of ``tasks`` (names: their default tasks); see
    :meth:`TaskSet.losses`."""
    return as_task_set(tasks).losses(preds, batch)


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
    "TaskSet",
    "as_task_set",
    "available",
    "compute_losses",
    "create",
    "default_task_channels",
    "get",
    "register",
    "task_channels",
    "task_knobs",
]
