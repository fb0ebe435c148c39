"""Surface normals: ``normal`` targets and predictions (B,3,H,W); an all-zero (or non-finite)
target is invalid. Predictions are raw; they are L2-normalised before the loss and the metrics.

Metrics over the valid pixels V of the split, with n̂ and n normalised, in float64:

    θ_p = (180/π) · arccos(clamp(n̂_p · n_p, −1, 1))
    mean = mean θ,  median = median θ,  within_a = |{p : θ_p < a}| / |V| for a ∈ {11.25, 22.5, 30}

(fractions in [0, 1], not percents). The accumulator keeps every valid pixel's cosine (a NYUv2
val split is ~70M pixels, ~0.6 GB) so that the median is exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densemtl.tasks import register
from densemtl.tasks.base import Column, Task, check_shape, zero_loss

NORMAL_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)

_NAN = float("nan")


def normal_valid(normal: Tensor) -> Tensor:
    """Valid normal pixels (B,H,W): any non-zero component."""
    return (normal.abs().sum(dim=1) > 0) & torch.isfinite(normal).all(dim=1)


def safe_normalize(pred: Tensor, eps: float = 1e-12) -> Tensor:
    """``F.normalize(pred, dim=1)`` with a bounded gradient where a vector is exactly zero.

    Correction (issue 10): ``F.normalize`` divides by max(‖p‖, eps), so at p = 0 (all head channels
    off) the gradient of anything computed from the unit vector is 1/eps = 1e12 times too large.
    Here a zero vector is divided by 1 instead: its value stays 0 (as before) and the gradient it
    receives is the incoming one, unscaled (for 1 − cos, the target: a step towards it). Every
    non-zero vector gets exactly ``F.normalize``'s value and gradient.
    """
    norm = pred.norm(2, dim=1, keepdim=True)
    denom = torch.where(norm > 0, norm.clamp_min(eps), torch.ones_like(norm))
    return pred / denom.expand_as(pred)


def normal_cosines(pred: Tensor, target: Tensor) -> Tensor:
    """cos θ (1-D float64, CPU) between normalised prediction and target at the valid pixels.

    Pixels are taken in (B,H,W) order and the cosine is computed with element-wise operations
    only, so the value of a pixel does not depend on the batch it came in.
    """
    check_shape("normal", pred, target)
    mask = normal_valid(target)
    p = pred.permute(0, 2, 3, 1)[mask].to(torch.float64)  # (N,3)
    t = target.permute(0, 2, 3, 1)[mask].to(torch.float64)
    p0, p1, p2 = p[:, 0], p[:, 1], p[:, 2]
    t0, t1, t2 = t[:, 0], t[:, 1], t[:, 2]
    dot = p0 * t0 + p1 * t1 + p2 * t2
    p_norm = torch.sqrt(p0 * p0 + p1 * p1 + p2 * p2).clamp_min(1e-12)
    t_norm = torch.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
    return (dot / (p_norm * t_norm)).clamp(-1.0, 1.0).cpu()


def normal_from_cosines(cos: Tensor) -> dict[str, float]:
    """Mean, median and fractions within 11.25°/22.5°/30° of θ = degrees(arccos(cos))."""
    keys = ["mean", "median", *(f"within_{a:g}" for a in NORMAL_THRESHOLDS)]
    if cos.numel() == 0:
        return dict.fromkeys(keys, _NAN)
    angles = torch.rad2deg(torch.acos(cos.to(torch.float64)))
    n = angles.numel()
    # Exact median: the mean of the two middle values when n is even (torch.median takes the lower).
    srt = angles.sort().values
    median = srt[n // 2].item() if n % 2 else 0.5 * (srt[n // 2 - 1].item() + srt[n // 2].item())
    out = {"mean": angles.sum().item() / n, "median": median}
    for a in NORMAL_THRESHOLDS:
        out[f"within_{a:g}"] = int((angles < a).sum()) / n
    return out


class CosineAccumulator:
    """Every valid pixel's cosine, one 1-D float64 tensor per batch."""

    def __init__(self) -> None:
        self.cos: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.cos.append(normal_cosines(pred, target))

    def compute(self) -> dict[str, float]:
        cos = torch.cat(self.cos) if self.cos else torch.zeros(0, dtype=torch.float64)
        return normal_from_cosines(cos)


def colour_normal(normal: np.ndarray) -> np.ndarray:
    """(3,H,W) normals (normalised here) to RGB = (n + 1) / 2; zero vectors -> black."""
    n = normal / np.maximum(np.linalg.norm(normal, axis=0, keepdims=True), 1e-8)
    rgb = ((n.transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    rgb[np.abs(normal).sum(0) == 0] = 0
    return rgb


@register("normal")
class Normal(Task):
    """Per-pixel unit surface normal; loss 1 − cos(p̂, n) over valid pixels.

    A left-right flip negates the x component. Mimicry (MDML): mean 1 − cos(p̂, peer̂) over
    pixels with valid ground truth. Ensemble: the sum of the members' normalised predictions
    (its direction is the mean direction; the metrics normalise it).
    """

    lower_is_better = {
        "mean": True,
        "median": True,
        "within_11.25": False,
        "within_22.5": False,
        "within_30": False,
    }
    primary = "mean"
    columns = (
        Column("mean", "angMean", "{:.1f}"),
        Column("median", "angMed", "{:.1f}"),
        Column("within_11.25", "<11.25"),
        Column("within_22.5", "<22.5"),
        Column("within_30", "<30"),
    )

    def channels(self, num_classes: int) -> int:
        return 3

    def valid(self, target: Tensor) -> Tensor:
        return normal_valid(target)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean of 1 − cos(pred, target) over valid pixels; ``pred`` is L2-normalised first
        (with :func:`safe_normalize`: bounded gradients at zero predictions, a correction)."""
        mask = normal_valid(target)
        if not mask.any():
            return zero_loss(pred)
        # Zero the invalid targets first: a NaN there would otherwise give NaN gradients (0 * NaN).
        target = torch.where(mask.unsqueeze(1), target, torch.zeros_like(target))
        cos = (safe_normalize(pred) * target).sum(dim=1)
        return (1.0 - cos[mask]).mean()

    def accumulator(self, num_classes: int) -> CosineAccumulator:
        return CosineAccumulator()

    def mimicry(self, pred: Tensor, peer: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
        """Mean 1 − cos(pred, peer) over pixels with valid ground-truth normals (both normalised;
        ``pred`` with :func:`safe_normalize`, a correction)."""
        mask = normal_valid(target)
        if not mask.any():
            return zero_loss(pred)
        cos = (safe_normalize(pred) * F.normalize(peer.detach(), dim=1)).sum(dim=1)
        return (1.0 - cos[mask]).mean()

    def ensemble(self, preds: list[Tensor]) -> Tensor:
        total = F.normalize(preds[0], dim=1)
        for p in preds[1:]:
            total = total + F.normalize(p, dim=1)
        return total

    def flip(self, target: Tensor) -> Tensor:
        out = torch.flip(target, dims=[-1]).clone()
        out[..., 0, :, :] = 0.0 - out[..., 0, :, :]  # not -x: keeps invalid zeros +0.0
        return out

    def colour(self, pred: Tensor, num_classes: int, reference: Tensor | None = None) -> np.ndarray:
        """RGB = (n̂ + 1) / 2 of the (3,H,W) prediction; zero vectors black."""
        return colour_normal(pred.detach().cpu().float().numpy())

    def colour_target(self, target: Tensor, num_classes: int) -> np.ndarray:
        return self.colour(target, num_classes)
