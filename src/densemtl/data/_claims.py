"""Data that cannot be what it claims: a split in which no file holds anything a task could learn.

One all-grey normal map, one image without an edge or a salient pixel, is possible; a whole split
of them is a broken conversion (normals written as grey, saliency stored as 0/1 and read as all
background after /255). Opening a dataset reads one task's files until one holds some signal (it
stops at the first, so a good dataset costs one file) and refuses the split in one line naming the
folder when none does; ``scan`` counts the files without signal, for ``data check`` to warn of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from densemtl.errors import DataError

__all__ = ["SIGNAL", "empty_counts", "has_signal", "note_unusable", "require_signal", "unusable_readings"]

#: Per task: what a target must hold somewhere for the task to learn anything, and its wording.
SIGNAL: dict[str, tuple[Callable[[torch.Tensor], bool], str]] = {
    "seg": (lambda t: bool((t >= 0).any()), "labelled pixel"),
    "depth": (lambda t: bool((t > 0).any()), "valid depth pixel (> 0)"),
    "normal": (lambda t: bool((t != 0).any()), "valid normal (a grey 128,128,128 pixel is none)"),
    "edge": (lambda t: bool(((t > 0.5) & (t <= 1)).any()), "edge pixel"),
    "saliency": (lambda t: bool(((t > 0.5) & (t <= 1)).any()), "salient pixel (v/255 > 0.5)"),
}


def has_signal(task: str, target: torch.Tensor) -> bool:
    """Whether ``target`` holds what ``task`` learns from (tasks without a rule: True)."""
    rule = SIGNAL.get(task)
    return True if rule is None else rule[0](target)


def require_signal(task: str, files: Sequence[Path], split: str, read: Callable[[int], torch.Tensor]) -> None:
    """A DataError naming the folder of ``files`` when none of the targets ``read(i)`` of ``task``
    holds any signal; reads until the first that does."""
    if task not in SIGNAL or not files:
        return
    for i in range(len(files)):
        if has_signal(task, read(i)):
            return
    raise DataError(
        f"{files[0].parent}: none of the {len(files)} {task} files of the {split} split holds any {SIGNAL[task][1]}: "
        f"the {task} task would train on nothing (leave it out of --tasks if the data has none)"
    )


def empty_counts(tasks: Sequence[str]) -> dict[str, int]:
    """The ``<task>_empty`` counters of ``scan`` for the tasks with a signal rule."""
    return {f"{t}_empty": 0 for t in tasks if t in SIGNAL}


def unusable_readings(path: Path, what: str, raw: np.ndarray, negative: bool) -> str | None:
    """A note for ``data check`` on a file whose values loading reads as invalid pixels (None when
    it has none): its NaN and infinite values and, where ``negative``, its negative ones (depth),
    counted, so that a broken conversion is named file by file rather than trained on as holes."""
    values = np.asarray(raw)
    found = [
        (int(np.isnan(values).sum()), "NaN"),
        (int(np.isinf(values).sum()), "infinite"),
        (int((values < 0).sum()) if negative else 0, "negative"),
    ]
    parts = [f"{n} {name}" for n, name in found if n]
    if not parts:
        return None
    listed = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    noun = "value" if sum(n for n, _ in found) == 1 else "values"
    return f"{path}: {what} holds {listed} {noun}, read as invalid pixels"


def note_unusable(notes: list[str], path: Path, what: str, negative: bool) -> None:
    """Append :func:`unusable_readings` of the ``.npy`` file at ``path`` (read memory-mapped) to ``notes``."""
    note = unusable_readings(path, what, np.load(path, mmap_mode="r", allow_pickle=False), negative)
    if note:
        notes.append(note)
