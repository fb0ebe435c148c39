"""Shared fixtures: tiny, seeded, CPU-only."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    import densemtl.training.trainer as trainer_module

    for name in ("plot_run", "plot_diagnostics", "save_panel"):
        monkeypatch.setattr(trainer_module, name, lambda *a, **k: None)


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """No figures at the end of a run: they take most of a tiny run's time and decide nothing in
    the tests that use this (``pytestmark = pytest.mark.usefixtures("no_plots")``)."""
    _no_plots(monkeypatch)


# -- trained runs shared by the whole session (read them; copy one before changing it) ----------
def _train_cli(argv: list[str]) -> None:
    """``densemtl ARGV`` in this process, with one intra-op thread; it must exit 0."""
    from densemtl.cli.main import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0, argv
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/data: a tiny synthetic dataset in the MTAN layout (4 train, 2 val images at 32x40);
    ROOT/run: a SegNet (width 0.125, 3 stages) trained on it for 0 epochs (checkpoint and plots of
    epoch 0); ROOT/m.safetensors: its export. Shared by every test: copy before changing."""
    from densemtl.data.writer import synthesize

    root = tmp_path_factory.mktemp("tiny-run")
    synthesize(root / "data", 4, 2, (32, 40), 0)
    args = ["train", "--dataset", "nyuv2", "--data-root", str(root / "data"), "--epochs", "0", "--batch-size", "2"]
    args += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet", "--out", str(root / "run")]
    _train_cli(args)
    _train_cli(["export", "--checkpoint", str(root / "run"), "--out", str(root / "m.safetensors")])
    return root


@pytest.fixture(scope="session")
def tiny_run_trained(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/data: ``tiny_run``'s data; ROOT/run: a run trained on it for one epoch (2 steps: the
    optimizer has state), without plots. Shared by every test: copy before changing."""
    root = tmp_path_factory.mktemp("tiny-run-trained")
    (root / "data").symlink_to(tiny_run / "data")
    args = ["train", "--dataset", "nyuv2", "--data-root", str(tiny_run / "data"), "--epochs", "1", "--batch-size", "2"]
    args += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet", "--out", str(root / "run")]
    with pytest.MonkeyPatch.context() as mp:
        _no_plots(mp)
        _train_cli(args)
    return root


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the run directory ``src`` at ``dst`` (to change without touching a shared run)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


#: The tiny settings of the per-method runs (:func:`method_run`), as ``densemtl train`` flags give them.
METHOD_RUN: dict[str, Any] = {
    "size": (32, 40), "n_train": 4, "n_val": 2, "batch_size": 2, "epochs": 1,
    "arch_args": {"width": 0.125, "depth_stages": 3},
}  # fmt: skip


@dataclass
class MethodRun:
    """A tiny run trained in this process by the :class:`~densemtl.training.trainer.Trainer`."""

    out: Path
    summary: dict[str, Any]
    before: dict[str, Tensor]  # the main model's parameters before training
    after: dict[str, Tensor]  # and after
    shared: set[str]  # the names of its shared parameters


def train_method_run(out: Path, values: dict[str, Any]) -> MethodRun:
    """Train ``values`` over :data:`METHOD_RUN` into ``out`` with the Trainer, as ``densemtl
    train`` with those flags and ``--quiet`` would, but without the plots."""
    from densemtl.training.config import resolve_config
    from densemtl.training.trainer import Trainer

    cfg = resolve_config({**METHOD_RUN, **values})
    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            _no_plots(mp)
            trainer = Trainer(cfg, out, progress=False, log=lambda line: None)
            model = trainer.model
            before = {k: p.detach().clone() for k, p in model.named_parameters()}
            summary = trainer.run()
    finally:
        torch.set_num_threads(before_threads)
    shared_ids = {id(p) for p in model.shared_parameters()}
    shared = {k for k, p in model.named_parameters() if id(p) in shared_ids}
    after = {k: p.detach().clone() for k, p in model.named_parameters()}
    return MethodRun(out, summary, before, after, shared)


@pytest.fixture(scope="session")
def method_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., MethodRun]:
    """``method_run(name, **values)``: the tiny run of method ``name`` (with config ``values``),
    trained once per session and shared by every test that asks for it (read it, do not change it)."""
    cache: dict[str, MethodRun] = {}

    def get(name: str, **values: Any) -> MethodRun:
        values = {"method": name, **values}
        key = repr(sorted(values.items()))
        if key not in cache:
            cache[key] = train_method_run(tmp_path_factory.mktemp(f"method-{name}"), values)
        return cache[key]

    return get


Partition = tuple[set[int], set[int], list[set[int]]]


def _task_partition(model: nn.Module) -> Partition:
    """``model``'s shared and per-task parameters partition its parameters
    (:func:`densemtl.testing.architectures.check_partition`: every task owns some, none is both
    shared and a task's or two tasks'); the ids (every, shared, per task)."""
    from densemtl.testing.architectures import check_partition

    return check_partition(model, type(model).__name__)


@pytest.fixture
def task_partition() -> Callable[[nn.Module], Partition]:
    return _task_partition


def _dense_batch(tasks: dict[str, int], size: tuple[int, int] = (32, 32), n: int = 2) -> dict[str, Tensor]:
    """A seeded batch with an image and a valid-looking target for each NYUv2-style task in ``tasks``
    (:func:`densemtl.testing._common.dense_batch`: ignored seg pixels, positive depth, unit normals)."""
    from densemtl.testing._common import dense_batch

    return dense_batch(tasks, size, n, seed=1)


@pytest.fixture
def dense_batch() -> Callable[..., dict[str, Tensor]]:
    return _dense_batch
