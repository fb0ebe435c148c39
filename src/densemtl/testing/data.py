"""The conformance of a task and of a dataset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from densemtl.testing._common import ConformanceError, require, resolve


def check_task(
    task: object,
    *,
    knobs: Mapping[str, Any] | None = None,
    target: Tensor | None = None,
    num_classes: int = 7,
) -> None:
    """The checks every task passes, for ``task`` (a registered name, a class, or an instance): a
    ``primary`` metric with a direction, table columns among its metrics, a whole number >= 1 of
    channels, an accumulator that gives every metric. With ``target`` (a batch of targets, B first;
    built-in tasks get one from the synthetic dataset): a finite scalar loss of a prediction of
    the right shape that back-propagates, the same loss for a batch whose every pixel is invalid
    (zero, still in the graph), metrics from ``update``/``compute``, and ``flip`` undone by ``flip``."""
    from densemtl.plugin_contracts import task_gap
    from densemtl.tasks import TASKS, Task

    label, make = resolve(TASKS, task, knobs)
    t = make()
    require(isinstance(t, Task), label, f"made a {type(t).__name__}, not a densemtl.tasks.base.Task")
    gap = task_gap(t)
    require(gap == "", label, gap)
    require(t.primary in t.metric_names, label, f"primary metric {t.primary!r} is not among {t.metric_names}")
    require({c.metric for c in t.table_columns()} <= set(t.metric_names), label, "a table column names no metric")
    c = t.channels(num_classes)
    require(isinstance(c, int) and not isinstance(c, bool) and c >= 1, label, f"channels() gave {c!r}")
    acc = t.accumulator(num_classes)
    require(set(acc.compute()) == set(t.metric_names), label, "the accumulator's metrics are not the task's")
    if target is None and isinstance(task, str):
        target = _synthetic_target(t.name, num_classes)
    if target is None:
        return
    hw = tuple(target.shape[-2:])
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(target.shape[0], c, *hw, generator=g).requires_grad_(True)
    loss = t.loss(pred, target)
    require(isinstance(loss, Tensor) and loss.dim() == 0 and loss.is_floating_point(), label,
            f"loss() gave {loss!r:.60}, not a scalar tensor")  # fmt: skip
    require(torch.isfinite(loss), label, "loss() is not finite for a random prediction")
    loss.backward()
    require(pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0, label,
            "loss() gives the prediction no finite gradient")  # fmt: skip
    valid = t.valid(target)
    require(valid.dtype == torch.bool and tuple(valid.shape[-2:]) == hw, label, "valid() is not a boolean mask at H×W")
    acc = t.accumulator(num_classes)
    acc.update(pred.detach(), target)
    metrics = acc.compute()
    require(set(metrics) == set(t.metric_names), label, "the accumulator's metrics are not the task's")
    one = target[0]
    require(torch.equal(t.flip(t.flip(one)), one), label, "flip(flip(target)) is not the target")
    require(tuple(t.ensemble([pred.detach(), pred.detach()]).shape) == tuple(pred.shape), label,
            "ensemble() of two predictions changes their shape")  # fmt: skip


def _synthetic_target(name: str, num_classes: int) -> Tensor | None:
    """A batch of two targets of task ``name`` from the synthetic dataset, or None if it has none."""
    from densemtl.data import create

    try:
        ds = create("synthetic", split="val", n=2, size=(24, 32), tasks=name)
    except Exception:  # noqa: BLE001 - a task the synthetic scenes do not render: no target to check with
        return None
    return torch.stack([ds[i][name] for i in range(2)])


def check_dataset(
    dataset: object, *, knobs: Mapping[str, Any] | None = None, split: str = "train", n: int | None = 2
) -> None:
    """The checks every dataset passes, for ``dataset`` (a registered name, made for ``split`` with
    its tiny knobs, ``n`` samples and ``knobs``; or a dataset object): ``tasks`` names registered
    tasks, ``num_classes`` is a whole number (>= 1 with "seg"), ``len`` >= 1, every sample is
    ``{"image": (3,H,W) float, <task>: target at H×W}`` in its task's layout, the same index gives
    the same sample, and ``set_epoch`` is callable."""
    from densemtl.data import DATASETS
    from densemtl.data._sample_check import check_sample
    from densemtl.errors import DenseMTLError
    from densemtl.tasks import TASKS

    if isinstance(dataset, str):
        extra = {"n": n, **dict(knobs or {})} if n is not None else dict(knobs or {})
        label, make = resolve(DATASETS, dataset, extra)
        ds = make(split=split)
    else:
        label, ds = f"dataset {type(dataset).__name__}", dataset
    tasks = getattr(ds, "tasks", None)
    require(isinstance(tasks, tuple | list) and tasks, label, f"'tasks' is {tasks!r}, not a tuple of task names")
    unknown = [t for t in tasks if TASKS.find(t) is None]
    require(not unknown, label, f"tasks {unknown} are not registered tasks")
    classes = getattr(ds, "num_classes", None)
    whole = isinstance(classes, int) and not isinstance(classes, bool) and classes >= ("seg" in tasks)
    require(whole, label, f"num_classes is {classes!r}, not a whole number (>= 1 with seg)")
    require(len(ds) >= 1, label, "it has no samples")
    require(callable(getattr(ds, "set_epoch", None)), label, "it has no set_epoch(epoch)")
    try:
        check_sample(ds, label, split)
    except DenseMTLError as e:
        raise ConformanceError(str(e)) from None
    ds.set_epoch(0)
    a, b = ds[0], ds[0]
    require(all(torch.equal(a[k], b[k]) for k in a), label, "dataset[0] twice gives two samples")
    image = a["image"]
    require(float(image.min()) >= 0.0 and float(image.max()) <= 1.0, label, "the image is not in 0..1")
    size = getattr(ds, "size", None)
    if size is not None:
        require(
            tuple(size) == tuple(image.shape[-2:]), label, f"size {size} is not the image's {tuple(image.shape[-2:])}"
        )
