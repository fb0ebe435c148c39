"""A task written and registered here, with no edit anywhere else, trains end to end.

``grey`` predicts the image's grey level (the channel mean) per pixel, with an L1 loss and a
mean-absolute-error metric. ``greyscenes`` is the synthetic dataset with a ``grey`` target added.
Both are registered by a fixture and removed again afterwards, so no other test sees them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import Tensor

from densemtl import data, tasks
from densemtl.bench.report import safe_delta_m
from densemtl.cli.main import main
from densemtl.data.transforms import random_scale_crop_flip, resize_sample
from densemtl.metrics import lower_is_better, primary_metric
from densemtl.tasks.base import Column, Task

SIZE = (32, 40)


class MeanAbsoluteError:
    """Σ|p̂ − p| and the pixel count, in float64, over every batch."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.total += (pred.double() - target.double()).abs().sum().item()
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        return {"mae": self.total / self.count if self.count else float("nan")}


class Grey(Task):
    """The image's grey level per pixel, (B,1,H,W) in [0, 1]."""

    lower_is_better = {"mae": True}
    primary = "mae"
    columns = (Column("mae", "greyMAE"),)
    interpolation = "bilinear"

    def channels(self, num_classes: int) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs().mean()

    def accumulator(self, num_classes: int) -> MeanAbsoluteError:
        return MeanAbsoluteError()


class GreyScenes:
    """The synthetic scenes plus ``grey``, the mean of the image's channels."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tasks = (*inner.tasks, "grey")
        self.num_classes = inner.num_classes
        self.size = inner.size

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.inner[index]
        sample["grey"] = sample["image"].mean(dim=0, keepdim=True)
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)


def greyscenes(split: str, **knobs: Any) -> GreyScenes:
    """The synthetic dataset of ``split``, built with the same knobs, plus the grey target."""
    return GreyScenes(data.create("synthetic", split, **knobs))


@pytest.fixture
def grey() -> Iterator[None]:
    """``grey`` and ``greyscenes`` registered for one test, and removed again after it."""
    tasks.register("grey")(Grey)
    data.register("greyscenes")(greyscenes)
    try:
        yield
    finally:
        tasks.TASKS.unregister("grey")
        data.DATASETS.unregister("greyscenes")
    assert "grey" not in tasks.available() and "greyscenes" not in data.available()


def tiny(epochs: int) -> list[str]:
    return [
        "--dataset", "greyscenes", "--size", f"{SIZE[0]}x{SIZE[1]}", "--n-train", "8", "--n-val", "4",
        "--batch-size", "4", "--epochs", str(epochs), "--arch", "segnet",
        "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet",
    ]  # fmt: skip


def test_the_task_is_asked_everywhere(grey: None) -> None:
    assert "grey" in tasks.available() and tasks.create("grey").name == "grey"
    assert lower_is_better("grey", "mae") is True and primary_metric("grey") == "mae"
    sample = greyscenes("val", size=SIZE, n=1)[0]
    # a bilinear target follows the image through resizing and the scale-crop-flip augmentation
    small = resize_sample(sample, (16, 20))
    assert torch.allclose(small["grey"], small["image"].mean(0, keepdim=True), atol=1e-5)
    for seed in range(4):
        out = random_scale_crop_flip(sample, torch.Generator().manual_seed(seed), scales=(1.5,))
        assert torch.allclose(out["grey"], out["image"].mean(0, keepdim=True), atol=1e-5)
    tile = tasks.create("grey").colour(sample["grey"], 7)
    assert tile.shape == (*SIZE, 3) and tile.dtype.name == "uint8" and tile.max() > tile.min()


def test_trains_end_to_end_and_is_reported(grey: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", *tiny(2), "--method", "pcgrad", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    header = next(line.split() for line in out.splitlines() if line.lstrip().startswith("epoch"))
    assert header[-1] == "greyMAE"
    table = [row.split() for row in out.splitlines() if row.split()[:1] and row.split()[0].isdigit()]
    table = [cells for cells in table if len(cells) == len(header)]
    assert [cells[-1] for cells in table] == [f"{r['val']['grey']['mae']:.3f}" for r in records]

    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(set(r["val"]["grey"]) == {"mae"} for r in records)
    assert set(records[1]["train_loss"]) == {"seg", "depth", "normal", "grey"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["seg", "depth", "normal", "grey"]
    assert summary["metrics"]["grey"]["mae"] == records[-1]["val"]["grey"]["mae"]
    assert summary["best"]["grey"]["mae"]["value"] == min(r["val"]["grey"]["mae"] for r in records)
    assert records[-1]["val"]["grey"]["mae"] < records[0]["val"]["grey"]["mae"]  # it learns

    plots = run / "plots"
    # one row of metric panels per task (2.2 in each at 100 dpi); predictions.png is a labelled figure
    assert Image.open(plots / "metrics.png").size[1] == 4 * 220
    assert Image.open(plots / "predictions.png").size[0] > SIZE[1] * (1 + 4)
    assert (plots / "losses.png").is_file()


def test_bench_delta_m_counts_the_task(grey: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENSEMTL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    args = [a for a in tiny(1) if a not in ("--arch", "segnet", "--quiet")]
    assert main(["bench", "--archs", "segnet", "--methods", "ew", "--seeds", "1", "--val-fraction", "0.25",
                 *args, "--out", str(out)]) == 0  # fmt: skip
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"single-task", "ew"} and rows["ew"]["grey/mae"] != "nan"
    assert "grey/mae ↓" in (out / "results.md").read_text()
    cell = json.loads((out / "runs" / "segnet-ew-s0" / "summary.json").read_text())["bench"]["test_metrics"]
    (base_dir,) = (tmp_path / "cache").glob("baselines/*/segnet-s0")
    base = json.loads((base_dir / "summary.json").read_text())["bench"]["test_metrics"]
    with_grey = safe_delta_m(cell, base)
    without = safe_delta_m({t: m for t, m in cell.items() if t != "grey"}, base)
    assert float(rows["ew"]["delta_m"]) == pytest.approx(with_grey, rel=1e-5)
    assert with_grey != pytest.approx(without, rel=1e-9)
