"""Architectures: ``create(name, task_channels=..., **kw)`` and ``available()``.

A new architecture is one module here that decorates its factory with
``@register("name", tiny={...})`` (``tiny``: the knobs that make it small enough for the
registry-driven tests), and a line in :data:`BUILT_IN` below: the module is imported when the
architecture is first looked up. Shared pieces live in ``layers`` (conv blocks, heads, attention
masks) and ``backbones`` (torchvision ResNets and their ImageNet weights).
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


#: The architectures of this package, each registered by the module of its name.
BUILT_IN = ("crossstitch", "hirmtl", "hps", "invpt", "mtan", "mtinet", "padnet", "segnet", "single", "vmsanet")
for _name in BUILT_IN:
    MODELS.lazy(_name, f"{__name__}.{_name}")

__all__ = ["BUILT_IN", "MODELS", "MultiTaskModel", "Predictions", "available", "count_parameters", "create", "register"]
