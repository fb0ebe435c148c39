"""Shared fixtures: tiny, seeded, CPU-only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)  # tiny tensors: threads only add contention

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Tiny settings for end-to-end training tests: a few images, a narrow SegNet.
TINY_TRAIN = [
    "--size",
    "32x40",
    "--n-train",
    "8",
    "--n-val",
    "4",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--arch-arg",
    "width=0.125",
    "--arch-arg",
    "depth_stages=3",
    "--quiet",
]


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY_TRAIN)


Partition = tuple[set[int], set[int], list[set[int]]]


def _task_partition(model: nn.Module) -> Partition:
    """Check that ``model``'s shared and per-task parameters partition its parameters.

    Every task owns some parameters, no parameter is both shared and a task's or two tasks',
    and together they are all the parameters. Returns the ids (every, shared, per task).
    """
    every = {id(p) for p in model.parameters()}
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in model.tasks]
    assert all(per_task)
    for i, own in enumerate(per_task):
        assert not own & shared
        assert all(not own & other for other in per_task[i + 1 :])
    assert shared.union(*per_task) == every
    return every, shared, per_task


@pytest.fixture
def task_partition() -> Callable[[nn.Module], Partition]:
    return _task_partition
