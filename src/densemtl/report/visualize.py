"""Prediction images: input, coloured segmentation, depth colour map and normals, side by side.

In ``prediction_grid`` each sample shows the prediction above the ground truth; black marks
ignored or invalid pixels.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset


def palette(num_classes: int) -> np.ndarray:
    """A fixed, distinguishable colour per class (tab20 then repeated with varied brightness)."""
    cmap = matplotlib.colormaps["tab20"]
    cols = [cmap(i % 20)[:3] for i in range(max(num_classes, 1))]
    return (np.asarray(cols) * 255).astype(np.uint8)


def colour_seg(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H,W) class ids (-1 ignore -> black) to (H,W,3) uint8."""
    pal = palette(num_classes)
    out = np.zeros((*labels.shape, 3), np.uint8)
    valid = labels >= 0
    out[valid] = pal[np.clip(labels[valid], 0, num_classes - 1)]
    return out


def colour_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H,W) depth to a magma colour map (near = bright); non-positive depth -> black."""
    valid = depth > 0
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo = float(depth[valid].min()) if vmin is None else vmin
    hi = float(depth[valid].max()) if vmax is None else vmax
    x = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = (matplotlib.colormaps["magma"](x)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def colour_normal(normal: np.ndarray) -> np.ndarray:
    """(3,H,W) normals (normalised here) to RGB = (n + 1) / 2; zero vectors -> black."""
    n = normal / np.maximum(np.linalg.norm(normal, axis=0, keepdims=True), 1e-8)
    rgb = ((n.transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    rgb[np.abs(normal).sum(0) == 0] = 0
    return rgb


def prediction_panel(
    image: Tensor,
    preds: dict[str, Tensor],
    num_classes: int,
    depth_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """One sample's panel (H, W*(1+tasks), 3): input then each task's prediction."""
    tiles = [(image.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)]
    if "seg" in preds:
        tiles.append(colour_seg(preds["seg"].detach().argmax(0).cpu().numpy(), num_classes))
    if "depth" in preds:
        lo, hi = depth_range if depth_range is not None else (None, None)
        tiles.append(colour_depth(preds["depth"].detach()[0].cpu().float().numpy(), lo, hi))
    if "normal" in preds:
        tiles.append(colour_normal(preds["normal"].detach().cpu().float().numpy()))
    sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts += [tile, sep]
    return np.concatenate(parts[:-1], axis=1)


def save_panel(panel: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path)


def target_panel(sample: dict[str, Tensor], num_classes: int) -> np.ndarray:
    """The ground truth of one sample laid out like ``prediction_panel`` (input, seg, depth, normal)."""
    preds: dict[str, Tensor] = {}
    if "seg" in sample:
        labels = sample["seg"].long()
        onehot = torch.full((num_classes, *labels.shape), -1.0)
        onehot.scatter_(0, labels.clamp_min(0)[None], 1.0)
        preds["seg"] = onehot
    for key in ("depth", "normal"):
        if key in sample:
            preds[key] = sample[key]
    panel = prediction_panel(sample["image"], preds, num_classes)
    if "seg" in sample:  # ignored pixels black, as in the prediction colouring of void
        w = sample["image"].shape[-1]
        ignore = (sample["seg"] < 0).cpu().numpy()
        tile = panel[:, w + 2 : 2 * w + 2]
        tile[ignore] = 0
    return panel


@torch.no_grad()
def prediction_grid(model: nn.Module, dataset: Dataset, num_classes: int, n: int = 4, scale: int = 2) -> np.ndarray:
    """Rows of (prediction panel over ground-truth panel) for the first ``n`` samples, upscaled."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows: list[np.ndarray] = []
    for i in range(min(n, len(dataset))):  # type: ignore[arg-type]
        sample = dataset[i]
        preds = model(sample["image"][None].to(device))
        rng = None
        if "depth" in sample and (sample["depth"] > 0).any():
            valid = sample["depth"][sample["depth"] > 0]
            rng = (float(valid.min()), float(valid.max()))
        rows.append(prediction_panel(sample["image"], {t: v[0] for t, v in preds.items()}, num_classes, rng))
        rows.append(target_panel(sample, num_classes))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    model.train(was_training)
    grid = np.concatenate(rows[:-1], axis=0)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)
