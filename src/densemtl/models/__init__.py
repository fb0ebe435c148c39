"""Architectures: ``create(name, task_channels=..., **kw)`` and ``available()``.

A new architecture is one module here that decorates its factory with ``@register("name")``;
every module of the package is imported (and so registered) when the package is.
"""

from __future__ import annotations

from typing import Any

from densemtl.models.base import MultiTaskModel
from densemtl.registry import Registry

MODELS: Registry[MultiTaskModel] = Registry("architecture")
register = MODELS.register


def available() -> list[str]:
    return MODELS.available()


def create(name: str, task_channels: dict[str, int] | None = None, **kwargs: Any) -> MultiTaskModel:
    """Build architecture ``name`` for ``task_channels`` (default NYUv2: 13 classes, depth, normals)."""
    if task_channels is None:
        task_channels = {"seg": 13, "depth": 1, "normal": 3}
    return MODELS.create(name, task_channels=task_channels, **kwargs)


def count_parameters(model: MultiTaskModel) -> dict[str, int]:
    """Numbers of shared and total trainable parameters."""
    shared = sum(p.numel() for p in model.shared_parameters())
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"shared": shared, "total": total}


def _import_architectures() -> None:
    # Every module in this package registers its architecture(s) with @register on import.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_architectures()

__all__ = ["MODELS", "MultiTaskModel", "available", "count_parameters", "create", "register"]
