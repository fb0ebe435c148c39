"""Salient object detection: ``saliency`` targets (B,1,H,W) float, 1 = salient, 0 = not; any
other value (-1, 255, NaN) is ignored. Predictions are logits (B,1,H,W).

Loss: binary cross-entropy with logits over the valid pixels.

Metrics, from counts over every valid pixel of the split (as InvPT's and ATRC's ``SaliencyMeter``,
not per image), with p = σ(logit) and the thresholds t = 0.05, 0.10, …, 0.95:

    TP_t = |{p >= t} ∩ {y = 1}|,  P_t = TP_t / |{p >= t}|,  R_t = TP_t / |{y = 1}|
    max_f = max_t (1 + β²) P_t R_t / (β² P_t + R_t)   with β² = 0.3 (0 where undefined)
    iou = TP / (TP + FP + FN) at t = 0.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from densemtl.tasks import register
from densemtl.tasks._binary import BinaryMapTask, binary_valid
from densemtl.tasks.base import Column, check_shape, zero_loss

#: 0.05, 0.10, …, 0.95 (k / 20 exactly, so that 0.5 is one of them).
SALIENCY_THRESHOLDS = torch.arange(1, 20, dtype=torch.float64) / 20
BETA_SQUARED = 0.3
_HALF = 9  # SALIENCY_THRESHOLDS[9] == 0.5


def saliency_counts(pred: Tensor, target: Tensor) -> Tensor:
    """(T, 4) int64 of one batch, per threshold: true positives, predicted positives, actual
    positives and valid pixels."""
    check_shape("saliency", pred, target)
    mask = binary_valid(target)
    prob = torch.sigmoid(pred.double())[mask].cpu()
    truth = (target[mask] > 0.5).cpu()
    n = len(SALIENCY_THRESHOLDS)
    # k = how many thresholds are <= p, so p >= t_j exactly when k > j
    k = torch.bucketize(prob, SALIENCY_THRESHOLDS, right=True)
    above = torch.bincount(k, minlength=n + 1).flip(0).cumsum(0).flip(0)[1:]
    tp = torch.bincount(k[truth], minlength=n + 1).flip(0).cumsum(0).flip(0)[1:]
    actual = torch.full((n,), int(truth.sum()), dtype=torch.int64)
    valid = torch.full((n,), int(mask.sum()), dtype=torch.int64)
    return torch.stack([tp, above, actual, valid], dim=1).to(torch.int64)


def saliency_from_counts(counts: Tensor) -> dict[str, float]:
    """max_f (β² = 0.3) over the thresholds and the IoU at 0.5 from (T, 4) counts; NaN when no
    valid pixel was seen (and the IoU when neither prediction nor truth has a positive)."""
    if int(counts[0, 3]) == 0:
        return {"max_f": float("nan"), "iou": float("nan")}
    c = counts.to(torch.float64)
    tp, predicted, actual = c[:, 0], c[:, 1], c[:, 2]
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = BETA_SQUARED * precision + recall
    f = torch.where(denom > 0, (1 + BETA_SQUARED) * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(tp))
    union = predicted[_HALF] + actual[_HALF] - tp[_HALF]
    iou = float(tp[_HALF] / union) if union > 0 else float("nan")
    return {"max_f": float(f.max()), "iou": iou}


class SaliencyAccumulator:
    """True, predicted and actual positives and valid pixels per threshold (int64), over the split."""

    def __init__(self) -> None:
        self.counts = torch.zeros(len(SALIENCY_THRESHOLDS), 4, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.counts += saliency_counts(pred, target)

    def compute(self) -> dict[str, float]:
        return saliency_from_counts(self.counts)


@register("saliency")
class Saliency(BinaryMapTask):
    """Per-pixel probability of belonging to a salient object; BCE loss; maxF and IoU.

    Mimicry (MDML): the binary KL divergence to the peer's probabilities over the valid pixels.
    Ensemble: the mean probability, as a logit. A flip mirrors the map; a zoom leaves it as it is.
    Pictures: σ(logit) as a grey map, white = salient; a target's salient pixels white, the rest
    (and ignored pixels) black.
    """

    lower_is_better = {"max_f": False, "iou": False}
    primary = "max_f"
    delta_metrics = ("max_f",)  # the field's Δm% (InvPT, MTI-Net)
    columns = (Column("max_f", "maxF"), Column("iou", "salIoU"))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean binary cross-entropy (with logits) over the valid pixels (0 if none)."""
        check_shape("saliency", pred, target)
        mask = binary_valid(target)
        if not mask.any():
            return zero_loss(pred)
        return F.binary_cross_entropy_with_logits(pred[mask], target[mask].to(pred.dtype))

    def accumulator(self, num_classes: int) -> SaliencyAccumulator:
        return SaliencyAccumulator()
