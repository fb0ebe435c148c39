"""Joint transforms on sample dicts (``image`` and one target per task; every key optional).

Images are interpolated bilinearly; each task's target as its task says (nearest neighbour for
the built-in ones, so that the invalid markers ``-1`` labels, ``0`` depth and all-zero normals
survive exactly), and the task says what a flip or a zoom does to its values. Keys that are
neither ``image`` nor a registered task pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from densemtl import tasks as task_registry
from densemtl.errors import ConfigError
from densemtl.tasks import Task, TaskSet

__all__ = ["random_scale_crop_flip", "resize_sample"]

_NEAREST = "nearest-exact"


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (C,H,W) float image (antialiased when shrinking)."""
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0]


def _resize_target(x: torch.Tensor, size: tuple[int, int], mode: str = _NEAREST) -> torch.Tensor:
    """Resize of a (C,H,W) or (H,W) tensor with ``mode`` (nearest by default), dtype preserved."""
    squeeze = x.dim() == 2
    t = x[None, None] if squeeze else x[None]
    out = F.interpolate(t.double() if not t.is_floating_point() else t, size=size, mode=mode)
    out = out[0, 0] if squeeze else out[0]
    return out.to(x.dtype)


def _specs(sample: dict[str, torch.Tensor]) -> dict[str, Task | None]:
    """The keys a transform touches, in sample order: ``image`` (None) and the registered tasks
    (with their defaults: what a resize, flip or zoom does to a target depends on no knob)."""
    known = set(task_registry.available())
    tasks = TaskSet(k for k in sample if k != "image" and k in known)
    return {k: None if k == "image" else tasks[k] for k in sample if k == "image" or k in known}


def _resize(x: torch.Tensor, task: Task | None, size: tuple[int, int]) -> torch.Tensor:
    """``image`` (task None) bilinearly, a target with its task's interpolation."""
    if task is None:
        return _resize_image(x, size)
    if task.interpolation == "bilinear":
        return _resize_image(x, size).to(x.dtype)
    return _resize_target(x, size, task.interpolation)


def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resize ``image`` and every task target of ``sample`` to ``size`` = (H, W); other keys
    pass through.

    Target values are not changed (resizing the picture does not move the camera).
    """
    size = (int(size[0]), int(size[1]))
    out = dict(sample)
    for key, task in _specs(sample).items():
        if tuple(sample[key].shape[-2:]) != size:
            out[key] = _resize(sample[key], task, size)
    return out


def _check_scales(scales: Sequence[float], flip_prob: float) -> list[float]:
    vals = [float(s) for s in scales]
    if not vals:
        raise ConfigError("random_scale_crop_flip: scales must not be empty")
    if any(not s >= 1.0 for s in vals):
        raise ConfigError(f"random_scale_crop_flip: every scale must be >= 1, got {tuple(vals)}")
    if not 0.0 <= float(flip_prob) <= 1.0:
        raise ConfigError(f"random_scale_crop_flip: flip_prob must be in [0, 1], got {flip_prob}")
    return vals


def random_scale_crop_flip(
    sample: dict[str, torch.Tensor],
    generator: torch.Generator,
    scales: Sequence[float] = (1.0, 1.2, 1.5),
    flip_prob: float = 0.5,
) -> dict[str, torch.Tensor]:
    """MTAN's joint augmentation: random scale-crop, then a random horizontal flip.

    A scale ``s`` is drawn from ``scales``; a window of size ``(int(H/s), int(W/s))`` is cropped at
    a random position and resized back to ``H x W`` (bilinear for the image, each target as its
    task says), and each task adjusts its values to the zoom (:meth:`Task.scale`; depth is
    divided by ``s``: zooming in by ``s`` looks like moving ``s`` times closer). Then, with
    probability ``flip_prob``, everything is mirrored left-right (:meth:`Task.flip`; the normal's
    x component is negated). All randomness comes from ``generator``, drawn in a fixed order
    (scale, crop row, crop column, flip); the input dict is not modified.
    """
    vals = _check_scales(scales, flip_prob)
    specs = _specs(sample)
    if not specs:
        return dict(sample)
    ref = sample["image"] if "image" in specs else sample[next(iter(specs))]
    height, width = int(ref.shape[-2]), int(ref.shape[-1])

    s = vals[int(torch.randint(len(vals), (1,), generator=generator))]
    h, w = max(1, int(height / s)), max(1, int(width / s))
    i = int(torch.randint(height - h + 1, (1,), generator=generator))
    j = int(torch.randint(width - w + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < flip_prob)

    out = dict(sample)
    for key, task in specs.items():
        x = sample[key][..., i : i + h, j : j + w]
        if (h, w) != (height, width):
            x = _resize(x, task, (height, width))
        if task is not None:
            x = task.scale(x, s)
        if flip:
            x = torch.flip(x, dims=[-1]) if task is None else task.flip(x)
        out[key] = x.contiguous()
    return out
