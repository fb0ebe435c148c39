"""Sizing a model before it is built: architecture knobs (from flags or from a file's metadata)
that would take more memory than the machine has are refused in one line, not allocated.

The architecture is first built on PyTorch's ``meta`` device (shapes only: no memory, no
initialisation, no weights downloaded). A model whose parameters and buffers alone take more
bytes than the machine's physical memory (:func:`physical_memory`) cannot be built at all and is
refused, naming the architecture and its knobs; a checkpoint's weights are compared with the meta
model's shapes before anything is allocated, so a file whose config names knobs its weights do
not have (``width: 4096`` over a width-0.125 model) is refused without building it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from densemtl.errors import ConfigError


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def model_bytes(model: nn.Module) -> tuple[int, int]:
    """(values, bytes) of ``model``'s parameters and buffers (meta tensors included)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def check_memory(model: nn.Module, arch: str, knobs: dict[str, Any]) -> None:
    """A ConfigError when ``model``'s parameters and buffers alone exceed physical memory."""
    limit = physical_memory()
    if limit is None:
        return
    values, size = model_bytes(model)
    if size > limit:
        raise ConfigError(
            f"architecture {arch!r} {knobs} has {values:.3g} parameters ({_gb(size)}), more than this "
            f"machine's {_gb(limit)} of memory; use smaller knobs"
        )


@contextlib.contextmanager
def _on_meta() -> Iterator[None]:
    with torch.device("meta"):
        yield


def meta_model(build: Any, arch: str, knobs: dict[str, Any]) -> nn.Module | None:
    """``build()`` on the meta device, checked against physical memory; None when the factory
    cannot build on the meta device (its own errors then come from the real build)."""
    probe = {**knobs, **({"pretrained": False} if knobs.get("pretrained") else {})}
    try:
        with _on_meta():
            model = build(probe)
    except ConfigError:
        raise
    except OverflowError as e:  # an infinite or astronomically large knob
        raise ConfigError(f"architecture {arch!r} {knobs}: a knob is too large ({e})") from None
    except Exception:  # noqa: BLE001 - a factory that needs real tensors: sized by the real build
        return None
    if not isinstance(model, nn.Module):
        return None
    check_memory(model, arch, knobs)
    return model


def first_nonfinite(model: nn.Module) -> str | None:
    """The name of ``model``'s first parameter (or batch-norm statistic) holding a NaN or inf, or None."""
    named = [*model.named_parameters(), *((k, b) for k, b in model.named_buffers() if k.endswith(("_mean", "_var")))]
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def check_finite(model: nn.Module, where: object) -> None:
    """A one-line ConfigError naming checkpoint ``where`` and the first non-finite tensor of its
    weights (``model``, loaded): a model with NaN or inf weights cannot predict anything."""
    name = first_nonfinite(model)
    if name is not None:
        raise ConfigError(
            f"checkpoint {where}: weight {name!r} holds NaN or inf values (the run diverged before it was "
            "saved), so it cannot predict anything; use an earlier checkpoint (best.pt) or train again"
        )
