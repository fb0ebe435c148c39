"""Semantic segmentation: ``seg`` targets (B,H,W) long with -1 = ignore, logits (B,C,H,W).

Metrics (labels y, predictions ŷ, pixels with y = -1 ignored), from the confusion matrix N (rows:
true class, columns: predicted class) summed over every pixel of the split, in int64:

    TP_c = N_cc,  FP_c = Σ_i N_ic − N_cc,  FN_c = Σ_j N_cj − N_cc
    IoU_c = TP_c / (TP_c + FP_c + FN_c),   mIoU = mean of IoU_c over classes with TP+FP+FN > 0
    pix_acc = Σ_c TP_c / Σ_ij N_ij
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.tasks import register
from densemtl.tasks.base import Column, Task, check_shape, zero_loss

_NAN = float("nan")


def seg_confusion(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix N (C,C) int64 of one batch: N[i, j] = #pixels of true class i predicted j.

    ``pred`` is logits (B,C,H,W) (argmaxed over C) or labels (B,H,W); ``target`` (B,H,W) with -1
    ignored.
    """
    if pred.dim() == target.dim() + 1:
        if pred.shape[1] != num_classes:
            raise ValueError(f"seg: logits have {pred.shape[1]} channels, expected num_classes={num_classes}")
        labels = pred.argmax(dim=1)
    else:
        labels = pred
    check_shape("seg", labels, target)
    labels = labels.long()
    target = target.long()
    valid = target >= 0
    t = target[valid]
    p = labels[valid]
    if t.numel() and int(t.max()) >= num_classes:
        raise ValueError(f"seg: target label {int(t.max())} >= num_classes={num_classes}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(f"seg: predicted labels must lie in [0, {num_classes})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.int64).cpu()


def seg_from_confusion(conf: Tensor) -> dict[str, float]:
    """mIoU (over classes with TP+FP+FN > 0) and pixel accuracy from a confusion matrix."""
    conf = conf.to(torch.float64)
    tp = conf.diagonal()
    denom = conf.sum(dim=0) + conf.sum(dim=1) - tp  # TP + FP + FN
    present = denom > 0
    total = conf.sum()
    miou = (tp[present] / denom[present]).mean().item() if present.any() else _NAN
    pix_acc = (tp.sum() / total).item() if total > 0 else _NAN
    return {"miou": miou, "pix_acc": pix_acc}


class ConfusionAccumulator:
    """The split's confusion matrix (int64), summed batch by batch."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.conf += seg_confusion(pred, target, self.num_classes)

    def compute(self) -> dict[str, float]:
        return seg_from_confusion(self.conf)


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinguishable colour per class (tab20, repeated past 20 classes)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    cols = [cmap(i % 20)[:3] for i in range(max(num_classes, 1))]
    return (np.asarray(cols) * 255).astype(np.uint8)


def colour_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H,W) class ids (-1 ignore -> black) to (H,W,3) uint8."""
    pal = palette(num_classes)
    out = np.zeros((*labels.shape, 3), np.uint8)
    valid = labels >= 0
    out[valid] = pal[np.clip(labels[valid], 0, num_classes - 1)]
    return out


@register("seg")
class Segmentation(Task):
    """Per-pixel classification into the dataset's classes; masked cross-entropy.

    Mimicry (MDML, after Hinton et al.'s distillation): τ² · mean over labelled pixels of
    KL(softmax(peer/τ) ‖ softmax(pred/τ)). Ensemble: the mean of the members' class
    probabilities, returned as log-probabilities (clamped at 1e-12) so argmax and softmax behave.
    """

    lower_is_better = {"miou": False, "pix_acc": False}
    primary = "miou"
    columns = (Column("miou", "mIoU"), Column("pix_acc", "pixAcc"))

    def channels(self, num_classes: int) -> int:
        return num_classes

    def valid(self, target: Tensor) -> Tensor:
        return target >= 0

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy over pixels whose label is not -1 (0 when none are)."""
        if not (target >= 0).any():
            return zero_loss(pred)
        return F.cross_entropy(pred, target, ignore_index=-1)

    def accumulator(self, num_classes: int) -> ConfusionAccumulator:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1 for seg, got {num_classes}")
        return ConfusionAccumulator(num_classes)

    def mimicry(self, pred: Tensor, peer: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
        """τ² · mean over labelled pixels of KL(softmax(peer/τ) ‖ softmax(pred/τ))."""
        mask = target >= 0
        if not mask.any():
            return zero_loss(pred)
        log_p = F.log_softmax(pred / temperature, dim=1)
        log_q = F.log_softmax(peer.detach() / temperature, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)  # (B,H,W)
        return kl[mask].mean() * temperature**2

    def ensemble(self, preds: list[Tensor]) -> Tensor:
        total = preds[0].softmax(1)
        for p in preds[1:]:
            total = total + p.softmax(1)
        return (total / len(preds)).clamp_min(1e-12).log()

    def colour(self, pred: Tensor, num_classes: int, reference: Tensor | None = None) -> np.ndarray:
        """The argmax class of the logits (C,H,W), one palette colour per class."""
        return colour_labels(pred.detach().argmax(0).cpu().numpy(), num_classes)

    def colour_target(self, target: Tensor, num_classes: int) -> np.ndarray:
        """The labels (H,W) in the prediction's palette, ignored pixels black."""
        return colour_labels(target.detach().long().cpu().numpy(), num_classes)
