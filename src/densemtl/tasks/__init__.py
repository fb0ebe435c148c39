"""The dense prediction tasks: names, output channels and masked losses.

Targets follow the data contract: ``seg`` (B,H,W) long with -1 = ignore, ``depth`` (B,1,H,W)
with 0 = invalid, ``normal`` (B,3,H,W) with all-zero = invalid. Predictions are raw network
outputs at input size: ``seg`` logits (B,C,H,W), ``depth`` (B,1,H,W), ``normal`` (B,3,H,W)
(normalised here before the loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TASKS: tuple[str, ...] = ("seg", "depth", "normal")


def task_channels(tasks: tuple[str, ...] | list[str], num_classes: int) -> dict[str, int]:
    """Output channels of each task's head: segmentation has one logit per class."""
    sizes = {"seg": num_classes, "depth": 1, "normal": 3}
    return {t: sizes[t] for t in tasks}


def depth_valid(depth: Tensor) -> Tensor:
    """Valid depth pixels: finite and non-zero. Shape as ``depth``."""
    return torch.isfinite(depth) & (depth != 0)


def normal_valid(normal: Tensor) -> Tensor:
    """Valid normal pixels (B,H,W): any non-zero component."""
    return (normal.abs().sum(dim=1) > 0) & torch.isfinite(normal).all(dim=1)


def seg_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over pixels whose label is not -1 (0 when none are)."""
    if not (target >= 0).any():
        return pred.sum() * 0.0
    return F.cross_entropy(pred, target, ignore_index=-1)


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over valid (non-zero) depth pixels."""
    mask = depth_valid(target)
    if not mask.any():
        return pred.sum() * 0.0
    return (pred[mask] - target[mask]).abs().mean()


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of 1 - cos(pred, target) over valid pixels; ``pred`` is L2-normalised first."""
    mask = normal_valid(target)
    if not mask.any():
        return pred.sum() * 0.0
    # Zero the invalid targets first: a NaN there would otherwise give NaN gradients (0 * NaN).
    target = torch.where(mask.unsqueeze(1), target, torch.zeros_like(target))
    cos = (F.normalize(pred, dim=1) * target).sum(dim=1)
    return (1.0 - cos[mask]).mean()


LOSSES = {"seg": seg_loss, "depth": depth_loss, "normal": normal_loss}


def compute_losses(
    preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: tuple[str, ...]
) -> dict[str, Tensor]:
    """One scalar loss per task, in the order of ``tasks``."""
    return {t: LOSSES[t](preds[t], batch[t]) for t in tasks}
