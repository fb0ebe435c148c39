"""What the rest of densemtl asks of a dataset: :class:`MultiTaskDataset`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

#: Seeds are 0 .. 2**32 - 1: every generator seeded from them (numpy's, torch's, the data
#: order's ``seed * 100_003 + epoch``) takes the result without overflow.
MAX_SEED = 2**32 - 1


@runtime_checkable
class MultiTaskDataset(Protocol):
    """A map-style dataset of dense multi-task samples.

    ``dataset[i]`` is ``{"image": (3,H,W) float, <task>: target}`` for each of ``tasks`` (the
    target layout is the task's: e.g. "seg" (H,W) long with -1 = ignore, "depth" (1,H,W) with
    0 = invalid, "normal" (3,H,W) with all-zero = invalid). ``num_classes`` is the class count of
    its segmentation (what a class-count-dependent head is sized by), ``size`` its (H, W).
    ``set_epoch(epoch)`` is called by the trainer before each epoch's loader is built (and with 0
    before validation): a dataset with random augmentation seeds it from the epoch, so that a
    resumed run draws the same augmentations; one without does nothing.
    """

    tasks: tuple[str, ...]
    num_classes: int
    size: tuple[int, int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Tensor]: ...

    def set_epoch(self, epoch: int) -> None: ...


class TaskSubset:
    """``base`` with only ``tasks`` (in that order): what ``--tasks`` trains on. Its samples hold the
    image and those tasks' targets; everything else (size, classes, epoch) is the base's."""

    def __init__(self, base: MultiTaskDataset, tasks: list[str] | tuple[str, ...]) -> None:
        self.base = base
        self.tasks = tuple(tasks)
        self.num_classes = base.num_classes
        self.size = base.size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.base[index]
        return {k: v for k, v in sample.items() if k == "image" or k in self.tasks}

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getattr__(self, name: str) -> object:  # the base's own extras (scan, root, ...)
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


#: How many samples of a split :func:`tasks_without_valid_pixels` reads at most (spread evenly).
VALID_SCAN_ITEMS = 16


def tasks_without_valid_pixels(dataset: MultiTaskDataset, items: int = VALID_SCAN_ITEMS) -> list[str]:
    """The tasks of ``dataset`` none of whose targets has a valid pixel in up to ``items`` samples
    spread evenly over it (all of them when it is smaller): a task whose metrics would be null and
    whose loss would be 0, e.g. Cityscapes frames without disparity. The global random generators
    are left as they were, so a run's numbers do not depend on the scan."""
    import random

    import numpy as np
    import torch

    from densemtl.errors import ConfigError
    from densemtl.tasks import TaskSet

    n = len(dataset)
    if n == 0:
        return []
    picks = sorted({round(i * (n - 1) / max(1, items - 1)) for i in range(min(items, n))})
    kinds = {}
    for name in dataset.tasks:
        try:
            kinds[name] = TaskSet([name])[name]  # validity needs no knob
        except ConfigError:  # a task this process cannot judge
            continue
    seen: set[str] = set()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            for i in picks:
                sample = dataset[i]
                for name, kind in kinds.items():
                    if name not in seen and name in sample and bool(kind.valid(sample[name]).any()):
                        seen.add(name)
                if len(seen) == len(kinds):
                    break
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return [t for t in kinds if t not in seen]
