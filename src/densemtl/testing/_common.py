"""What the conformance checks share: the error, the resolution of a name or object, a batch."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

#: the tasks an architecture is checked with (NYUv2's), and the input size
NYU: dict[str, int] = {"seg": 13, "depth": 1, "normal": 3}
SIZE = (32, 48)


class ConformanceError(AssertionError):
    """A conformance check failed: the message names the object and the check."""


def require(ok: object, label: str, what: str) -> None:
    """A :class:`ConformanceError` ``"label: what"`` unless ``ok``."""
    if not ok:
        raise ConformanceError(f"{label}: {what}")


def resolve(registry: Any, obj: object, knobs: Mapping[str, Any] | None) -> tuple[str, Callable[..., Any]]:
    """(words naming ``obj``, a function making a fresh one from keyword arguments): a registered
    name is made with its declared tiny knobs, then ``knobs``; a class or factory with ``knobs``;
    an object is copied (each check then gets one that has not run yet)."""
    extra = dict(knobs or {})
    if isinstance(obj, str):
        name = registry.canonical(obj)
        base = {**registry.tiny(name), **extra}
        return f"{registry.kind} {name!r}", lambda **kw: registry.create(name, **{**base, **kw})
    if callable(obj) and (inspect.isclass(obj) or inspect.isfunction(obj)):
        label = f"{registry.kind} {getattr(obj, '__qualname__', obj)!r}"
        return label, lambda **kw: obj(**{**extra, **kw})  # type: ignore[operator]
    label = f"{registry.kind} {type(obj).__name__}"
    return label, lambda **kw: copy.deepcopy(obj)


def accepts(make: Callable[..., Any], obj: object, registry: Any, key: str) -> bool:
    """Whether the factory behind ``obj`` (a registered name, a class or a factory) takes ``key``."""
    factory = registry.get(obj) if isinstance(obj, str) else obj
    try:
        return key in inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def dense_batch(tasks: Mapping[str, int], size: tuple[int, int] = SIZE, n: int = 2, seed: int = 1) -> dict[str, Tensor]:
    """A seeded batch with an image and a valid-looking target for each of seg, depth and normal
    in ``tasks`` (segmentation with ignored pixels, positive depth, unit normals)."""
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.rand(n, 3, *size, generator=g)}
    for t, c in tasks.items():
        if t == "seg":
            batch[t] = torch.randint(-1, c, (n, *size), generator=g)
        elif t == "depth":
            batch[t] = torch.rand(n, 1, *size, generator=g) + 0.5
        elif t == "normal":
            batch[t] = torch.nn.functional.normalize(torch.randn(n, 3, *size, generator=g), dim=1)
        else:
            raise ValueError(f"dense_batch makes targets for seg, depth and normal, not {t!r}")
    return batch
