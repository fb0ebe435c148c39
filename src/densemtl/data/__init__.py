"""Datasets: ``create(name, split, **kw)`` and ``available()``.

Every dataset is a :class:`~densemtl.data.base.MultiTaskDataset`: it yields dicts
``{"image": (3,H,W) float, <task>: target}`` for the tasks it has and exposes ``tasks``,
``num_classes``, ``size`` (H, W) and ``set_epoch``. A new dataset is one module here whose
factory is decorated with ``@register("name")``; every module of the package is imported (and so
registered) when the package is. A factory takes ``split``, ``root``, ``size``, ``augment``,
``seed``, ``n`` and ``num_classes``; any further keyword is a knob that a config sets through
``data_args`` (``--data-arg KEY=VALUE``).
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


def _import_datasets() -> None:
    # Every module in this package may register datasets with @register on import.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_datasets()

__all__ = ["DATASETS", "MultiTaskDataset", "available", "create", "register"]
