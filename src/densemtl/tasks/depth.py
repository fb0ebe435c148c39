"""Depth: ``depth`` targets and predictions (B,1,H,W); a target of 0 (or non-finite) is invalid.

Metrics over the valid pixels V of the whole split, accumulated in float64:

    abs_err = (1/|V|) Σ_{p∈V} |d̂_p − d_p|,   rel_err = (1/|V|) Σ_{p∈V} |d̂_p − d_p| / d_p

These are pixel-weighted over the split, as in LibMTL (which weights each batch by its valid
pixels). MTAN instead averages per-batch means, so its result depends on the batch size and on
how many valid pixels each batch has; we do not.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from densemtl.tasks import register
from densemtl.tasks.base import Column, Task, check_shape, zero_loss

_NAN = float("nan")


def depth_valid(depth: Tensor) -> Tensor:
    """Valid depth pixels: finite and non-zero. Shape as ``depth``."""
    return torch.isfinite(depth) & (depth != 0)


def depth_sums(pred: Tensor, target: Tensor) -> tuple[float, float, int]:
    """(Σ|d̂−d|, Σ|d̂−d|/d, |V|) over the valid pixels of one batch, in float64."""
    check_shape("depth", pred, target)
    mask = depth_valid(target)
    t = target[mask].to(torch.float64)
    err = (pred[mask].to(torch.float64) - t).abs()
    return err.sum().item(), (err / t).sum().item(), int(mask.sum())


def depth_from_sums(abs_sum: float, rel_sum: float, count: int) -> dict[str, float]:
    """abs_err = Σ|d̂−d| / |V| and rel_err = Σ(|d̂−d|/d) / |V|."""
    if count == 0:
        return {"abs_err": _NAN, "rel_err": _NAN}
    return {"abs_err": abs_sum / count, "rel_err": rel_sum / count}


class DepthAccumulator:
    """Running float64 sums of the absolute and relative errors and the valid-pixel count."""

    def __init__(self) -> None:
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        a, r, n = depth_sums(pred, target)
        self.abs_sum += a
        self.rel_sum += r
        self.count += n

    def compute(self) -> dict[str, float]:
        return depth_from_sums(self.abs_sum, self.rel_sum, self.count)


def colour_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H,W) depth to a magma colour map (near = bright); non-positive depth -> black."""
    import matplotlib

    valid = depth > 0
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo = float(depth[valid].min()) if vmin is None else vmin
    hi = float(depth[valid].max()) if vmax is None else vmax
    x = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = (matplotlib.colormaps["magma"](x)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


@register("depth")
class Depth(Task):
    """Per-pixel distance; L1 loss over valid pixels.

    Zooming into the image by s looks like moving s times closer, so a scale augmentation divides
    the depth by s. Mimicry (MDML): mean |pred − peer| over pixels with valid ground truth.
    Ensemble: the mean prediction.
    """

    lower_is_better = {"abs_err": True, "rel_err": True}
    primary = "abs_err"
    columns = (Column("abs_err", "absErr"), Column("rel_err", "relErr"))

    def channels(self, num_classes: int) -> int:
        return 1

    def valid(self, target: Tensor) -> Tensor:
        return depth_valid(target)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean absolute error over valid (non-zero) depth pixels."""
        mask = depth_valid(target)
        if not mask.any():
            return zero_loss(pred)
        return (pred[mask] - target[mask]).abs().mean()

    def accumulator(self, num_classes: int) -> DepthAccumulator:
        return DepthAccumulator()

    def mimicry(self, pred: Tensor, peer: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
        """Mean |pred − peer| over pixels with valid ground-truth depth."""
        mask = depth_valid(target)
        if not mask.any():
            return zero_loss(pred)
        return (pred[mask] - peer.detach()[mask]).abs().mean()

    def scale(self, target: Tensor, s: float) -> Tensor:
        return target / s if s != 1.0 else target

    def colour(self, pred: Tensor, num_classes: int, reference: Tensor | None = None) -> np.ndarray:
        """Magma colour map of (1,H,W) depth, on the range of the reference's positive depths
        when it has any (so prediction and ground truth compare), else on its own."""
        lo = hi = None
        if reference is not None and (reference > 0).any():
            valid = reference[reference > 0]
            lo, hi = float(valid.min()), float(valid.max())
        return colour_depth(pred.detach()[0].cpu().float().numpy(), lo, hi)

    def colour_target(self, target: Tensor, num_classes: int) -> np.ndarray:
        """The ground truth on its own range; non-positive depth black."""
        return colour_depth(target.detach()[0].cpu().float().numpy())
