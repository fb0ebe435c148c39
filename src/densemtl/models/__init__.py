"""Architectures: ``create(name, task_channels=..., **kw)`` and ``available()``.

A new architecture is one module here that decorates its factory with
``@register("name", tiny={...})`` (``tiny``: the knobs that make it small enough for the
registry-driven tests); every module of the package is imported (and so registered) when the
package is. Shared pieces live in ``layers`` (conv blocks, heads, attention masks) and
``backbones`` (torchvision ResNets and their ImageNet weights).
"""

from __future__ import annotations

from typing import Any

from densemtl.models.base import MultiTaskModel, Predictions
from densemtl.registry import Registry

MODELS: Registry[MultiTaskModel] = Registry("architecture", returns=MultiTaskModel)
register = MODELS.register


def available() -> list[str]:
    """Names of the registered architectures, sorted."""
    return MODELS.available()


def create(name: str, task_channels: dict[str, int] | None = None, **kwargs: Any) -> MultiTaskModel:
    """Build architecture ``name`` for ``task_channels`` (default: ``tasks.default_task_channels()``)."""
    if task_channels is None:
        # Imported here: the task registry is not needed to import the architectures.
        from densemtl.tasks import default_task_channels

        task_channels = default_task_channels()
    return MODELS.create(name, task_channels=task_channels, **kwargs)


def count_parameters(model: MultiTaskModel) -> dict[str, int]:
    """Numbers of shared and total trainable parameters."""
    shared = sum(p.numel() for p in model.shared_parameters())
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"shared": shared, "total": total}


_SUPPORT = frozenset({"base", "layers", "backbones", "timm_backbone"})  # modules that register no architecture


def _import_architectures() -> None:
    # Every module in this package registers its architecture(s) with @register on import.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SUPPORT and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_architectures()

__all__ = ["MODELS", "MultiTaskModel", "Predictions", "available", "count_parameters", "create", "register"]
