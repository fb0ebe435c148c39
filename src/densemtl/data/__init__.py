"""Datasets: ``create(name, split, **kw)`` and ``available()``.

Every dataset is a :class:`~densemtl.data.base.MultiTaskDataset`: it yields dicts
``{"image": (3,H,W) float, <task>: target}`` for the tasks it has and exposes ``tasks``,
``num_classes``, ``size`` (H, W) and ``set_epoch``. A new dataset is one module here whose
factory is decorated with ``@register("name")``, and a line in :data:`BUILT_IN` below: the module
is imported when the dataset is first looked up. A factory takes ``split``, ``root``, ``size``,
``augment``, ``seed``, ``n`` and ``num_classes``; any further keyword is a knob that a config sets
through ``data_args`` (``--data-arg KEY=VALUE``).
"""

from __future__ import annotations

from typing import Any

from densemtl.data.base import MultiTaskDataset
from densemtl.registry import Registry

DATASETS: Registry[MultiTaskDataset] = Registry("dataset")
register = DATASETS.register


def available() -> list[str]:
    return DATASETS.available()


def create(name: str, split: str, **kwargs: Any) -> MultiTaskDataset:
    """Build dataset ``name`` for ``split`` ("train" or "val")."""
    return DATASETS.create(name, split=split, **kwargs)


#: The datasets of this package: name -> the module that registers it.
BUILT_IN = {
    "cityscapes": "mtan",
    "nyud": "nyud",
    "nyuv2": "mtan",
    "pascal_context": "pascal_context",
    "synthetic": "synthetic",
}
for _name, _module in BUILT_IN.items():
    DATASETS.lazy(_name, f"{__name__}.{_module}")

__all__ = ["BUILT_IN", "DATASETS", "MultiTaskDataset", "available", "create", "register"]
