"""Datasets: ``create(name, split, **kw)`` and ``available()``.

Every dataset yields dicts ``{"image": (3,H,W) float, "seg": (H,W) long (-1 ignore),
"depth": (1,H,W) float (0 invalid), "normal": (3,H,W) float (0 invalid)}`` (keys only for the
tasks it has) and exposes ``tasks``, ``num_classes`` and ``size`` (H, W).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from densemtl.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset")
register = DATASETS.register


def available() -> list[str]:
    return DATASETS.available()


def create(name: str, split: str, **kwargs: Any) -> Dataset:
    """Build dataset ``name`` for ``split`` ("train" or "val")."""
    return DATASETS.create(name, split=split, **kwargs)


# registry lines
from densemtl.data import mtan, synthetic  # noqa: E402,F401

__all__ = ["DATASETS", "available", "create", "register"]
