"""Prediction images: the input, then one tile per task coloured by the task, side by side.

In ``prediction_grid`` each sample shows the prediction above the ground truth; black marks
ignored or invalid pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from densemtl import tasks as task_registry


def _image_tile(image: Tensor) -> np.ndarray:
    return (image.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _join(tiles: Sequence[np.ndarray]) -> np.ndarray:
    """Tiles side by side with 2-pixel white separators."""
    sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for tile in tiles:
        parts += [tile, sep]
    return np.concatenate(parts[:-1], axis=1)


def prediction_panel(
    image: Tensor,
    preds: Mapping[str, Tensor],
    num_classes: int,
    targets: Mapping[str, Tensor] | None = None,
) -> np.ndarray:
    """One sample's panel (H, W*(1+tasks), 3): the input, then each task's prediction (no batch
    dimension) in the order of ``preds``, coloured by the task; ``targets`` (the sample's ground
    truth, optional) lets a task colour on the ground truth's range."""
    targets = targets or {}
    tiles = [_image_tile(image)]
    for t, pred in preds.items():
        tiles.append(task_registry.get(t).colour(pred, num_classes, targets.get(t)))
    return _join(tiles)


def save_panel(panel: np.ndarray, path: Path) -> None:
    """Write a panel or grid as a PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(path)


def target_panel(sample: Mapping[str, Tensor], num_classes: int, tasks: Sequence[str]) -> np.ndarray:
    """The ground truth of one sample laid out like ``prediction_panel`` for ``tasks`` (a black
    tile where the sample has no target for a task)."""
    tiles = [_image_tile(sample["image"])]
    for t in tasks:
        if t in sample:
            tiles.append(task_registry.get(t).colour_target(sample[t], num_classes))
        else:
            tiles.append(np.zeros_like(tiles[0]))
    return _join(tiles)


@torch.no_grad()
def prediction_grid(model: nn.Module, dataset: Dataset, num_classes: int, n: int = 4, scale: int = 2) -> np.ndarray:
    """Rows of (prediction panel over ground-truth panel) for the first ``n`` samples, upscaled."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows: list[np.ndarray] = []
    for i in range(min(n, len(dataset))):  # type: ignore[arg-type]
        sample = dataset[i]
        preds = {t: v[0] for t, v in model(sample["image"][None].to(device)).items()}
        rows.append(prediction_panel(sample["image"], preds, num_classes, sample))
        rows.append(target_panel(sample, num_classes, list(preds)))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    model.train(was_training)
    grid = np.concatenate(rows[:-1], axis=0)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)
