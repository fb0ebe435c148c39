"""The structure of a dataset's samples, checked on the first one of each split before training.

A dataset (a plugin's above all) that yields a 2-D image, a target of the wrong shape or dtype, or
misses a key would fail deep inside the model with a traceback; this says in one line which
dataset, which key, and what was expected (:class:`~densemtl.data.base.MultiTaskDataset`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from densemtl.errors import DataError

__all__ = ["TARGET_LAYOUT", "check_sample"]

#: The built-in tasks' target layouts: (leading dims before H, W; dtype "int" or "float").
TARGET_LAYOUT: dict[str, tuple[tuple[int, ...], str]] = {
    "seg": ((), "int"),
    "parts": ((), "int"),
    "depth": ((1,), "float"),
    "edge": ((1,), "float"),
    "saliency": ((1,), "float"),
    "normal": ((3,), "float"),
}


def _layout(lead: tuple[int, ...], kind: str) -> str:
    dims = "×".join([*(str(d) for d in lead), "H", "W"])
    return f"{'an' if dims[0] == 'H' else 'a'} {dims} {'integer' if kind == 'int' else 'float'} tensor"


def _shape(value: object) -> str:
    """``value`` for a message: a tensor's (or array's) shape and dtype, else its type."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return f"a {type(value).__name__}"
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    return f"{type(value).__name__} {tuple(shape)} {dtype}"


def _first_sample(dataset: object) -> object:
    """``dataset[0]``, the global random generators left as they were (a run's draws do not depend on it)."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            from densemtl.plugin_contracts import guarded  # a plugin's dataset that raises: one line naming it

            return guarded(dataset, "dataset[0]", lambda: dataset[0])  # type: ignore[index]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def check_sample(dataset: object, name: str, split: str) -> None:
    """A DataError unless ``dataset.tasks`` names tasks and ``dataset[0]`` is ``{"image": (3,H,W)
    float, <task>: target}`` with each of them at the image's H×W in its layout
    (:data:`TARGET_LAYOUT`; a plugin task's target: any tensor ending in H×W)."""
    tasks = getattr(dataset, "tasks", None)
    if not isinstance(tasks, tuple | list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise DataError(f"dataset {name!r}: 'tasks' must be a tuple of task names, got {tasks!r}")
    where = f"dataset {name!r} ({split} split, sample 0)"
    sample = _first_sample(dataset)
    if not isinstance(sample, Mapping):
        raise DataError(f"{where} is a {type(sample).__name__}; a sample must be a dict {{'image': ..., <task>: ...}}")
    image = sample.get("image")
    ok = isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point()
    if not ok or min(image.shape) < 1:  # type: ignore[union-attr]
        got = "no key 'image'" if "image" not in sample else _shape(image)
        raise DataError(f"{where}: 'image' must be {_layout((3,), 'float')} in 0..1, got {got}")
    hw = tuple(image.shape[-2:])
    for task in tasks:
        if task not in sample:
            raise DataError(f"{where}: no key {task!r} (has {', '.join(map(str, sample))})")
        target = sample[task]
        lead, kind = TARGET_LAYOUT.get(task, (None, "any"))
        ok = isinstance(target, torch.Tensor) and target.ndim >= 2 and tuple(target.shape[-2:]) == hw
        if ok and lead is not None:
            integral = not target.is_floating_point() and target.dtype != torch.bool
            ok = tuple(target.shape[:-2]) == lead and (integral if kind == "int" else target.is_floating_point())
        if not ok:
            want = _layout(lead, kind) if lead is not None else "a tensor ending in H×W"
            raise DataError(f"{where}: {task!r} must be {want} at the image's {hw[0]}×{hw[1]}, got {_shape(target)}")
