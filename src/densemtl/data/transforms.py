"""Joint transforms on sample dicts (``image``, ``seg``, ``depth``, ``normal``; every key optional).

Images are interpolated bilinearly; labels, depth and normals with nearest neighbour, so that the
invalid markers (``-1`` labels, ``0`` depth, all-zero normals) survive exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from densemtl.errors import ConfigError

__all__ = ["random_scale_crop_flip", "resize_sample"]

_NEAREST = "nearest-exact"


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (C,H,W) float image (antialiased when shrinking)."""
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0]


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (C,H,W) or (H,W) tensor, dtype preserved."""
    squeeze = x.dim() == 2
    t = x[None, None] if squeeze else x[None]
    out = F.interpolate(t.double() if not t.is_floating_point() else t, size=size, mode=_NEAREST)
    out = out[0, 0] if squeeze else out[0]
    return out.to(x.dtype)


def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resize every known key of ``sample`` to ``size`` = (H, W); other keys pass through.

    Depth values are not rescaled (resizing the picture does not move the camera).
    """
    size = (int(size[0]), int(size[1]))
    out = dict(sample)
    for key, value in sample.items():
        if key == "image":
            if tuple(value.shape[-2:]) != size:
                out[key] = _resize_image(value, size)
        elif key in ("seg", "depth", "normal") and tuple(value.shape[-2:]) != size:
            out[key] = _resize_nearest(value, size)
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
    a random position and resized back to ``H x W`` (bilinear for the image, nearest otherwise).
    Depth is divided by ``s`` (zooming in by ``s`` looks like moving ``s`` times closer). Then, with
    probability ``flip_prob``, everything is mirrored left-right and the normal's x component is
    negated. All randomness comes from ``generator``; the input dict is not modified.
    """
    vals = _check_scales(scales, flip_prob)
    ref = next((sample[k] for k in ("image", "seg", "depth", "normal") if k in sample), None)
    if ref is None:
        return dict(sample)
    height, width = int(ref.shape[-2]), int(ref.shape[-1])

    s = vals[int(torch.randint(len(vals), (1,), generator=generator))]
    h, w = max(1, int(height / s)), max(1, int(width / s))
    i = int(torch.randint(height - h + 1, (1,), generator=generator))
    j = int(torch.randint(width - w + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < flip_prob)

    out = dict(sample)
    for key in ("image", "seg", "depth", "normal"):
        if key not in sample:
            continue
        x = sample[key][..., i : i + h, j : j + w]
        if (h, w) != (height, width):
            x = _resize_image(x, (height, width)) if key == "image" else _resize_nearest(x, (height, width))
        if key == "depth" and s != 1.0:
            x = x / s
        if flip:
            x = torch.flip(x, dims=[-1])
            if key == "normal":
                x = x.clone()
                x[0] = 0.0 - x[0]  # not -x: keeps invalid zeros +0.0
        out[key] = x.contiguous()
    return out
