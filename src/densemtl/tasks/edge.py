"""Boundary detection: ``edge`` targets (B,1,H,W) float, 1 = edge, 0 = not; any other value (-1,
255, NaN) is ignored. Predictions are logits (B,1,H,W).

Loss: the class-balanced binary cross-entropy of MTI-Net and InvPT (after HED), with a fixed
positive weight w (0.95 by default, a knob) over the valid pixels V, x the logit and y the label:

    L = (1/|V|) Σ_{p∈V} [ w · y_p · softplus(−x_p) + (1 − w) · (1 − y_p) · softplus(x_p) ]

(their ``BalancedBinaryCrossEntropyLoss`` scales ``pos_weight = w / (1 − w)`` and divides by
``1 / (1 − w)``: the same number).

Metrics: ``ods_f`` and ``ois_f``, the BSDS F-measures at the optimal dataset and per-image
thresholds (see :mod:`densemtl.tasks._edge_eval`: optional NMS, thinning, one-to-one matching
within ``max_dist`` × the image diagonal: 0.0075 for PASCAL-Context, 0.011 for NYUD, a knob),
computed on sigmoid(logit) with ignored pixels set to 0 in both maps; and ``loss``, the balanced
BCE above over every valid pixel of the split (the "edge loss" the papers log during training).
The accumulator keeps (matched, ground-truth, predicted) pixel counts per image and threshold,
never the maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.tasks import register
from densemtl.tasks._binary import BinaryMapTask, binary_valid
from densemtl.tasks._edge_eval import default_thresholds, image_counts, ods_ois
from densemtl.tasks.base import Column, check_shape, zero_loss

_NAN = float("nan")


def balanced_bce_sum(pred: Tensor, target: Tensor, pos_weight: float) -> tuple[Tensor, int]:
    """(Σ of the balanced BCE over the valid pixels, their count); the sum keeps the graph."""
    check_shape("edge", pred, target)
    mask = binary_valid(target)
    y = torch.where(mask, target, torch.zeros_like(target)).to(pred.dtype)
    per_pixel = pos_weight * y * F.softplus(-pred) + (1.0 - pos_weight) * (1.0 - y) * F.softplus(pred)
    return per_pixel[mask].sum(), int(mask.sum())


class EdgeAccumulator:
    """Per-image BSDS counts (N, T, 3) and the split's balanced-BCE sum and valid-pixel count."""

    def __init__(self, task: Edge) -> None:
        self.task = task
        self.thresholds = default_thresholds(task.thresholds)
        self.counts: list[np.ndarray] = []
        self.loss_sum = 0.0
        self.loss_count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        total, n = balanced_bce_sum(pred.double(), target.double(), self.task.pos_weight)
        self.loss_sum += float(total)
        self.loss_count += n
        mask = binary_valid(target)
        prob = torch.where(mask, torch.sigmoid(pred.double()), torch.zeros((), dtype=torch.float64))
        gt = mask & (target > 0.5)
        for p, g in zip(prob[:, 0].cpu().numpy(), gt[:, 0].cpu().numpy(), strict=True):
            self.counts.append(image_counts(p, g, self.thresholds, self.task.max_dist, self.task.nms))

    def compute(self) -> dict[str, float]:
        counts = np.stack(self.counts) if self.counts else np.zeros((0, len(self.thresholds), 3), np.int64)
        ods, ois = ods_ois(counts)
        loss = self.loss_sum / self.loss_count if self.loss_count else _NAN
        return {"ods_f": ods, "ois_f": ois, "loss": loss}


@register("edge")
class Edge(BinaryMapTask):
    """Per-pixel boundary probability; class-balanced BCE; ODS/OIS F-measures.

    Knobs: ``pos_weight`` w in (0, 1) (0.95, as MTI-Net and InvPT on NYUD and PASCAL),
    ``max_dist`` the matching tolerance as a fraction of the image diagonal (0.0075, BSDS and
    PASCAL-Context; NYUD uses 0.011), ``thresholds`` how many BSDS thresholds (99: 0.01 … 0.99),
    ``nms`` whether to suppress non-maxima before thresholding (off, as seism and BSDS, which
    only thin). Mimicry (MDML): the binary KL divergence to the peer's probabilities over the
    valid pixels. Ensemble: the mean probability, as a logit. A flip mirrors the map; a zoom
    leaves it as it is. Pictures: σ(logit) as a grey map, white = certain edge; a target's edges
    white, the rest (and ignored pixels) black.
    """

    lower_is_better = {"ods_f": False, "ois_f": False, "loss": True}
    primary = "ods_f"
    delta_metrics = ("ods_f",)  # the field's Δm% (InvPT, MTI-Net)
    columns = (Column("ods_f", "odsF"), Column("ois_f", "oisF"), Column("loss", "edgeLoss", "{:.4f}"))

    def __init__(self, pos_weight: float = 0.95, max_dist: float = 0.0075, thresholds: int = 99, nms: bool = False):
        if not 0.0 < pos_weight < 1.0:
            raise ConfigError(f"edge: pos_weight must be in (0, 1), got {pos_weight!r}")
        if not max_dist > 0.0:
            raise ConfigError(f"edge: max_dist must be > 0 (a fraction of the image diagonal), got {max_dist!r}")
        if isinstance(thresholds, bool) or not isinstance(thresholds, int) or thresholds < 1:
            raise ConfigError(f"edge: thresholds must be a positive integer, got {thresholds!r}")
        self.pos_weight, self.max_dist, self.thresholds, self.nms = float(pos_weight), float(max_dist), thresholds, nms

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Balanced BCE with positive weight ``pos_weight`` over the valid pixels (0 if none)."""
        total, n = balanced_bce_sum(pred, target, self.pos_weight)
        return total / n if n else zero_loss(pred)

    def accumulator(self, num_classes: int) -> EdgeAccumulator:
        return EdgeAccumulator(self)
