"""The :class:`Task` base class: everything that is specific to one dense prediction task.

A task is registered once (``@densemtl.tasks.register("name")`` on a subclass) and the rest of
densemtl only asks it: how many output channels its head has, its masked loss and validity mask,
a streaming metric accumulator with the direction of each metric, the console columns, how to
colour a prediction, what a resize/flip/scale of the input does to its target, the mimicry loss
of mutual learning and how an ensemble averages it. Targets and predictions follow the data
contract: a batch target is (B, ...) and a prediction (B, C, H, W) at the input size; colouring
and augmentation work on one sample (no batch dimension).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.registry import Registry


class MetricAccumulator(Protocol):
    """Streaming metrics of one task: add batches with ``update``, read ``compute`` at any time.

    ``compute`` must equal the metrics of the concatenated batches and return one float per name
    of the task's ``metric_names`` (NaN where nothing valid was seen).
    """

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Column:
    """One column of the per-epoch console table: the metric, its header label and format."""

    metric: str
    label: str
    fmt: str = "{:.3f}"


def check_shape(task: str, pred: Tensor, target: Tensor) -> None:
    """A ValueError naming ``task`` when prediction and target shapes differ."""
    if pred.shape != target.shape:
        raise ValueError(f"{task}: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def zero_loss(pred: Tensor) -> Tensor:
    """A 0 that keeps ``pred`` in the graph (a batch without a valid pixel gives zero gradients)."""
    return pred.sum() * 0.0


def mean_of(preds: list[Tensor]) -> Tensor:
    """(p_1 + … + p_n) / n, summed left to right (for two members exactly 0.5 · (p_1 + p_2))."""
    total = preds[0]
    for p in preds[1:]:
        total = total + p
    return total / len(preds)


class Task(ABC):
    """Base class of a dense task; subclasses set the class attributes and the abstract methods.

    Class attributes:
        name: the registry name (set by ``register``); also the key in batches and predictions.
        lower_is_better: every metric's name, in display order, and whether lower is better
            (Δm% and model selection read it).
        primary: the one metric that tables and model selection use.
        delta_metrics: the metrics Δm% and model selection average over (default: every metric
            with a direction); edges count their ODS F only, as the field's Δm% does.
        columns: the console table columns (default: every metric, 3 decimals).
        interpolation: how a resize of the sample resizes the target: ``"nearest-exact"`` keeps
            invalid markers (-1 labels, 0 depth) exact; ``"bilinear"`` suits smooth targets.
    """

    name: ClassVar[str] = ""
    lower_is_better: ClassVar[dict[str, bool]] = {}
    primary: ClassVar[str] = ""
    delta_metrics: ClassVar[tuple[str, ...] | None] = None
    columns: ClassVar[tuple[Column, ...]] = ()
    interpolation: ClassVar[str] = "nearest-exact"

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The task's metrics, in display order."""
        return tuple(self.lower_is_better)

    def table_columns(self) -> tuple[Column, ...]:
        """``columns``, or one 3-decimal column per metric when the task declares none."""
        return self.columns or tuple(Column(m, m[:8]) for m in self.metric_names)

    # -- model and loss --------------------------------------------------------------------------
    @abstractmethod
    def channels(self, num_classes: int) -> int:
        """Output channels of the task's head (``num_classes`` is the dataset's class count)."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """The scalar training loss over the valid pixels (0, still in the graph, when none is)."""

    def valid(self, target: Tensor) -> Tensor:
        """Boolean mask of the valid target pixels (default: finite values, shape as ``target``)."""
        return torch.isfinite(target)

    @abstractmethod
    def accumulator(self, num_classes: int) -> MetricAccumulator:
        """A fresh streaming metric accumulator (see :class:`MetricAccumulator`)."""

    # -- mutual learning and ensembles -----------------------------------------------------------
    def mimicry(self, pred: Tensor, peer: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
        """The loss pulling ``pred`` towards the (detached) ``peer`` prediction, for MDML."""
        raise ConfigError(f"task {self.name!r} defines no mimicry loss, so it cannot be trained with a peer")

    def ensemble(self, preds: list[Tensor]) -> Tensor:
        """The ensemble prediction of several networks' predictions (default: their mean)."""
        return mean_of(preds)

    # -- augmentation (one sample, no batch dimension) -------------------------------------------
    def flip(self, target: Tensor) -> Tensor:
        """The target of the left-right mirrored image (default: mirror the pixels)."""
        return torch.flip(target, dims=[-1])

    def scale(self, target: Tensor, s: float) -> Tensor:
        """The target after zooming into the image by ``s`` >= 1 (default: unchanged)."""
        return target

    # -- pictures (one sample, no batch dimension) -----------------------------------------------
    def colour(self, pred: Tensor, num_classes: int, reference: Tensor | None = None) -> np.ndarray:
        """(H, W, 3) uint8 picture of one prediction; ``reference`` is the sample's ground truth
        when known (e.g. to share its colour range). Default: the channel mean as a grey ramp
        over its finite range (or the reference's), non-finite pixels black."""
        value = pred.detach().cpu().double()
        value = (value.mean(dim=0) if value.dim() == 3 else value).numpy()
        span = reference.detach().cpu().double().numpy() if reference is not None else value
        finite = np.isfinite(value)
        ok = np.isfinite(span)
        if not finite.any() or not ok.any():
            return np.zeros((*value.shape, 3), np.uint8)
        lo, hi = float(span[ok].min()), float(span[ok].max())
        grey = np.clip((np.where(finite, value, lo) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
        rgb[~finite] = 0
        return rgb

    def colour_target(self, target: Tensor, num_classes: int) -> np.ndarray:
        """(H, W, 3) uint8 picture of one ground truth, invalid pixels black (default: as a
        prediction coloured on its own range)."""
        rgb = self.colour(target, num_classes, reference=target)
        valid = self.valid(target)
        mask = valid.all(dim=0) if valid.dim() == 3 else valid
        rgb[~mask.cpu().numpy()] = 0
        return rgb


#: The task registry (``densemtl.tasks.register``; its built-in names are declared in ``densemtl.tasks``).
TASKS: Registry[Task] = Registry("task")
