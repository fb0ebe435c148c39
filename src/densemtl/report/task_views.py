"""What a task's picture means, and its prediction as a plain array.

Two functions dispatch on the :class:`~densemtl.tasks.base.Task` subclass
(:func:`functools.singledispatch`, so a subclass inherits its parent's view and a user's own task
registers its own with ``@legend.register(MyTask)`` / ``@raw_array.register(MyTask)``):

- :func:`legend`: for one sample's prediction and ground truth, what explains its colours: the
  classes it shows (:class:`Classes`, a legend), a value scale (:class:`ColourBar`, e.g. depth in
  metres) or a sentence (:class:`Caption`); None when nothing can be said.
- :func:`raw_array`: one sample's prediction (C, H, W) as the array a user wants to save: class
  ids for segmentation and parts, depth in the dataset's unit (metres for every built-in
  dataset), unit normal vectors, probabilities for binary maps.

Each view restates how its task colours a tile (``Task.colour``), next to the others here, so
that a change of colouring is seen in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import singledispatch

import numpy as np
import torch
from torch import Tensor

from densemtl.tasks._binary import BinaryMapTask
from densemtl.tasks.base import Task
from densemtl.tasks.depth import Depth
from densemtl.tasks.normal import Normal, safe_normalize
from densemtl.tasks.parts import PART_NAMES, Parts
from densemtl.tasks.seg import Segmentation, palette


@dataclass(frozen=True)
class Classes:
    """The class ids a tile pair shows, with every class's name and colour (uint8 RGB)."""

    ids: frozenset[int]
    names: tuple[str, ...]
    colours: np.ndarray
    #: the ground truth has ignored pixels (drawn black)
    ignored: bool = False


@dataclass(frozen=True)
class ColourBar:
    """A continuous scale: ``cmap`` from ``vmin`` to ``vmax`` (in the task's unit, ``label``)."""

    cmap: str
    vmin: float
    vmax: float
    label: str


@dataclass(frozen=True)
class Caption:
    """A sentence saying how to read the tiles."""

    text: str


Legend = Classes | ColourBar | Caption


def class_names(names: Sequence[str], count: int, prefix: str = "class") -> tuple[str, ...]:
    """``names`` when there is one per class, else ``"class 0"``, ``"class 1"``, …"""
    return tuple(names) if len(names) == count else tuple(f"{prefix} {i}" for i in range(count))


def _classes(pred: Tensor, target: Tensor | None, names: tuple[str, ...], colours: np.ndarray) -> Classes:
    """The labels the argmax of ``pred`` and the ``target`` labels (-1: ignored) show."""
    ids = set(pred.detach().argmax(0).unique().tolist())
    labels = target.detach().long().unique().tolist() if target is not None else []
    ids |= {i for i in labels if i >= 0}
    return Classes(frozenset(int(i) for i in ids), names, colours, ignored=any(i < 0 for i in labels))


@singledispatch
def legend(
    task: Task, pred: Tensor, target: Tensor | None, num_classes: int, names: Sequence[str] = ()
) -> Legend | None:
    """What explains the colours of ``pred`` (C, H, W) and its ground truth ``target`` (or None).

    The default serves a task that keeps :meth:`Task.colour`: the channel mean as a grey ramp over
    the finite range of the target (or of the prediction). A task with its own colouring and no
    registered view gets None.
    """
    if type(task).colour is not Task.colour:
        return None
    span = target if target is not None and torch.isfinite(target).any() else pred
    finite = span.detach().double()[torch.isfinite(span)]
    if finite.numel() == 0:
        return None
    return ColourBar("gray", float(finite.min()), float(finite.max()), f"{task.name} (channel mean)")


@legend.register
def _(task: Segmentation, pred: Tensor, target: Tensor | None, num_classes: int, names: Sequence[str] = ()) -> Legend:
    return _classes(pred, target, class_names(names, num_classes), palette(num_classes))


@legend.register
def _(task: Parts, pred: Tensor, target: Tensor | None, num_classes: int, names: Sequence[str] = ()) -> Legend:
    count = task.num_labels
    part_names = PART_NAMES if len(PART_NAMES) == count else ("background", *(f"part {i}" for i in range(1, count)))
    return _classes(pred, target, part_names, palette(count))


@legend.register
def _(task: Depth, pred: Tensor, target: Tensor | None, num_classes: int, names: Sequence[str] = ()) -> Legend | None:
    # Depth.colour maps the reference's positive range (else the prediction's own) to magma,
    # near = bright: that is magma_r from the nearest to the farthest depth.
    for span in (target, pred):
        if span is not None and (span > 0).any():
            positive = span.detach()[span > 0].double()
            return ColourBar("magma_r", float(positive.min()), float(positive.max()), "depth (m); black: ≤ 0")
    return None


@legend.register
def _(task: Normal, pred: Tensor, target: Tensor | None, num_classes: int, names: Sequence[str] = ()) -> Legend:
    return Caption("colour = (n + 1) / 2: x red, y green, z blue")


@legend.register
def _(task: BinaryMapTask, pred: Tensor, target: Tensor | None, num_classes: int, names: Sequence[str] = ()) -> Legend:
    return ColourBar("gray", 0.0, 1.0, f"{task.name} probability")


@singledispatch
def raw_array(task: Task, pred: Tensor) -> np.ndarray:
    """One sample's prediction (C, H, W) as a saved array: (H, W) float32 when C is 1, else
    (H, W, C) float32 (a task without a registered view: its raw output)."""
    value = pred.detach().float().cpu()
    return value[0].numpy() if value.shape[0] == 1 else value.permute(1, 2, 0).contiguous().numpy()


@raw_array.register
def _(task: Segmentation, pred: Tensor) -> np.ndarray:
    return pred.detach().argmax(0).to(torch.int32).cpu().numpy()


@raw_array.register
def _(task: Depth, pred: Tensor) -> np.ndarray:
    return pred.detach()[0].float().cpu().numpy()


@raw_array.register
def _(task: Normal, pred: Tensor) -> np.ndarray:
    unit = safe_normalize(pred.detach().float()[None])[0]
    return unit.permute(1, 2, 0).contiguous().cpu().numpy()


@raw_array.register
def _(task: BinaryMapTask, pred: Tensor) -> np.ndarray:
    return torch.sigmoid(pred.detach()[0].float()).cpu().numpy()
