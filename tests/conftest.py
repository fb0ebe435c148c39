"""Shared fixtures: tiny, seeded, CPU-only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

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


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Every test runs with one intra-op thread, restored afterwards (``bench`` sets its own count).

    The tensors here are tiny and the machine is shared: a second thread only spin-waits for a
    core, and made steps 5-100x slower in CPU time than one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def plugin_modules_forgotten() -> Iterator[None]:
    """The plugin modules a test's commands import (``densemtl.plugins``' list of loaded modules,
    which the next command hands its workers) are forgotten after it: no test inherits another's."""
    from densemtl import plugins

    before = list(plugins._loaded)
    yield
    plugins._loaded[:] = before


@pytest.fixture
def tiny_args() -> list[str]:
    return list(TINY_TRAIN)


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """No figures at the end of a run: they take most of a tiny run's time and decide nothing in
    the tests that use this (``pytestmark = pytest.mark.usefixtures("no_plots")``)."""
    import densemtl.training.trainer as trainer_module

    for name in ("plot_run", "plot_diagnostics", "save_panel"):
        monkeypatch.setattr(trainer_module, name, lambda *a, **k: None)


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


def _dense_batch(tasks: dict[str, int], size: tuple[int, int] = (32, 32), n: int = 2) -> dict[str, Tensor]:
    """A seeded batch with an image and a valid-looking target for each NYUv2-style task in ``tasks``.

    Segmentation has ignored (-1) pixels; depth is positive; normals are unit vectors.
    """
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(n, 3, *size, generator=g)}
    for t, c in tasks.items():
        if t == "seg":
            batch[t] = torch.randint(-1, c, (n, *size), generator=g)
        elif t == "depth":
            batch[t] = torch.rand(n, 1, *size, generator=g) + 0.5
        elif t == "normal":
            batch[t] = nn.functional.normalize(torch.randn(n, 3, *size, generator=g), dim=1)
        else:
            raise ValueError(f"no target maker for task {t!r}")
    return batch


@pytest.fixture
def dense_batch() -> Callable[..., dict[str, Tensor]]:
    return _dense_batch
