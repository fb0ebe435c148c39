"""Bringing a sample to a size: centred crop / centred pad with each key's fill, or a resize.

NYUD-MT and PASCAL-Context both pad the image with the ImageNet mean colour (0 after the usual
normalisation) and each target with its invalid marker, and crop centred where larger.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from densemtl.data.transforms import resize_sample

__all__ = ["FIT_MODES", "IMAGENET_MEAN", "fit_sample"]

#: The image's padding colour.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ``pad``: crop/pad only; ``resize``: resize to the size; ``shrink``: shrink to fit (keeping the
#: aspect) where larger, then pad.
FIT_MODES = ("pad", "resize", "shrink")


def _renormalised(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sample`` with its ``normal`` (if any) scaled back to unit vectors after a resize."""
    if "normal" in sample:
        n = sample["normal"]
        sample["normal"] = n / n.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return sample


def fit_sample(
    sample: dict[str, torch.Tensor], size: tuple[int, int], fill: Mapping[str, float], how: str = "pad"
) -> dict[str, torch.Tensor]:
    """``sample`` at ``size`` (see :data:`FIT_MODES` for ``how``); targets padded with ``fill[key]``,
    the image with :data:`IMAGENET_MEAN`. A sample already at ``size`` is returned as it is."""
    (h, w), (th, tw) = (int(s) for s in sample["image"].shape[-2:]), (int(size[0]), int(size[1]))
    if (h, w) == (th, tw):
        return sample
    if how == "resize":
        return _renormalised(resize_sample(sample, (th, tw)))
    if how == "shrink" and (h > th or w > tw):
        s = min(th / h, tw / w)
        sample = _renormalised(resize_sample(sample, (max(1, round(h * s)), max(1, round(w * s)))))
        h, w = (int(x) for x in sample["image"].shape[-2:])
    top, left = max(h - th, 0) // 2, max(w - tw, 0) // 2
    ch, cw = min(h, th), min(w, tw)
    pad_top, pad_left = (th - ch) // 2, (tw - cw) // 2
    out = {}
    for key, x in sample.items():
        x = x[..., top : top + ch, left : left + cw]
        if (ch, cw) != (th, tw):
            if key == "image":
                canvas = torch.tensor(IMAGENET_MEAN, dtype=x.dtype)[:, None, None].repeat(1, th, tw)
            else:
                canvas = torch.full((*x.shape[:-2], th, tw), fill[key], dtype=x.dtype)
            canvas[..., pad_top : pad_top + ch, pad_left : pad_left + cw] = x
            x = canvas
        out[key] = x.contiguous()
    return out
