"""``densemtl bench``: Δm% over seeds by hand, resuming, the reports, the baseline cache, bad input."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from densemtl.bench.grid import grid_from_values
from densemtl.bench.report import Result, cell_rows, summarize
from densemtl.bench.runner import carve
from densemtl.cli.main import main

TINY = [
    "--size", "32x40", "--n-train", "6", "--n-val", "2", "--batch-size", "6", "--epochs", "1",
    "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--val-fraction", "0.34",
]  # fmt: skip


GRID = ["--archs", "segnet", "--methods", "ew,mgda", "--seeds", "1"]


def m(miou: float, abs_err: float) -> dict[str, dict[str, float]]:
    return {"seg": {"miou": miou}, "depth": {"abs_err": abs_err}}


def test_delta_m_over_seeds_matches_a_hand_computed_table() -> None:
    # Baseline: miou 0.40, 0.60 -> mean 0.50; abs_err 0.50, 0.70 -> mean 0.60.
    base = [Result("segnet", "single-task", 0, m(0.40, 0.50)), Result("segnet", "single-task", 1, m(0.60, 0.70))]
    cells = [
        # a s0: miou +10% (0.55 vs 0.50), abs_err 0.54 vs 0.60 = -10% error -> +10; Δm = +10
        Result("segnet", "a", 0, m(0.55, 0.54)),
        # a s1: miou -10%, abs_err 0.66 = +10% error -> -10; Δm = -10
        Result("segnet", "a", 1, m(0.45, 0.66)),
        # b s0: miou +20%, abs_err 0%; Δm = +10.   b s1: miou 0%, abs_err 0.48 = -20% error -> +20; Δm = +10
        Result("segnet", "b", 0, m(0.60, 0.60)),
        Result("segnet", "b", 1, m(0.50, 0.48)),
    ]
    rows = cell_rows(cells, base)
    dm = {(r["method"], r["seed"]): r["delta_m"] for r in rows}
    # baseline s0: miou -20, abs_err 0.50 vs 0.60 -> +16.667; Δm = -1.667; s1 the opposite
    expected = {("single-task", 0): -5 / 3, ("single-task", 1): 5 / 3, ("a", 0): 10.0, ("a", 1): -10.0}
    expected |= {("b", 0): 10.0, ("b", 1): 10.0}
    assert dm == pytest.approx(expected)
    table = {e["method"]: e for e in summarize(rows)}
    # a: mean 0, sample std sqrt((10² + 10²) / 1) = 14.142; b: mean 10, std 0 -> b ranks first
    assert table["a"]["delta_m"] == pytest.approx((0.0, math.sqrt(200.0)))
    assert table["b"]["delta_m"] == pytest.approx((10.0, 0.0))
    assert (table["b"]["rank"], table["a"]["rank"]) == (1, 2) and "rank" not in table["single-task"]
    # metric mean ± std: a's miou 0.55, 0.45 -> 0.50 ± sqrt(2 · 0.05²) = 0.0707
    assert table["a"]["seg/miou"] == pytest.approx((0.5, math.sqrt(2) * 0.05))


def test_zero_baseline_metric_is_left_out_of_delta_m() -> None:
    base = [Result("hps", "single-task", 0, {"seg": {"miou": 0.5}, "normal": {"within_11.25": 0.0}})]
    cell = [Result("hps", "ew", 0, {"seg": {"miou": 0.6}, "normal": {"within_11.25": 0.1}})]
    assert cell_rows(cell, base)[1]["delta_m"] == pytest.approx(20.0)


def test_carved_split_is_deterministic_and_disjoint() -> None:
    train, val = carve(10, 0.2)
    assert (train, val) == carve(10, 0.2) and len(val) == 2 and sorted(train + val) == list(range(10))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("bench")
    old = os.environ.get("DENSEMTL_CACHE")
    os.environ["DENSEMTL_CACHE"] = str(root / "cache")
    try:
        out = root / "b"
        assert (
            main(["bench", "--archs", "segnet", "--methods", "ew,mgda", "--seeds", "1", *TINY, "--out", str(out)]) == 0
        )
        yield out, root / "cache"
    finally:
        if old is None:
            os.environ.pop("DENSEMTL_CACHE", None)
        else:
            os.environ["DENSEMTL_CACHE"] = old


def test_end_to_end_reports_contain_every_cell(bench: tuple[Path, Path]) -> None:
    out, cache = bench
    assert {p.name for p in (out / "runs").iterdir()} == {"segnet-ew-s0", "segnet-mgda-s0"}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["method"], r["seed"]) for r in rows} == {("single-task", "0"), ("ew", "0"), ("mgda", "0")}
    assert all(r["delta_m"] != "nan" and "normal/within_30" in r for r in rows)
    md = (out / "results.md").read_text()
    page = (out / "report.html").read_text()
    for text in (md, page):
        assert "| segnet | ew |" in md and "mgda" in text and "never looks at it" in text
    assert "data:image/png;base64," in page
    summary = json.loads((out / "runs" / "segnet-mgda-s0" / "summary.json").read_text())
    assert summary["bench"]["selected_epoch"] == 1 and summary["bench"]["n_val_carved"] == 2
    assert set(summary["bench"]["test_metrics"]) == {"seg", "depth", "normal"}
    assert len(list(cache.glob("baselines/*/segnet-s0/summary.json"))) == 1


def test_an_interrupted_bench_continues(bench: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    out, cache = bench
    runs = out / "runs"
    ew, mgda = runs / "segnet-ew-s0", runs / "segnet-mgda-s0"
    (baseline,) = cache.glob("baselines/*/segnet-s0")
    kept = {p: p.stat().st_mtime_ns for p in (baseline / "summary.json", ew / "checkpoints" / "last.pt")}
    # ew: killed after its last checkpoint, before the summary -> re-evaluated, not retrained (last.pt kept)
    (ew / "summary.json").unlink()
    # mgda: killed before its first checkpoint -> trained again
    (mgda / "summary.json").unlink()
    (mgda / "checkpoints" / "last.pt").unlink()
    capsys.readouterr()
    assert main(["bench", *GRID, *TINY, "--jobs", "2", "--out", str(out)]) == 0  # 2 spawned processes
    log = capsys.readouterr().out
    assert "1 of 3 runs already finished, 2 to go" in log and "[3/3]" in log
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (ew / "summary.json").is_file() and (mgda / "checkpoints" / "last.pt").is_file()
    assert "mgda" in (out / "results.md").read_text()


def test_baselines_are_cached_across_benches(bench: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    """A second bench, from a YAML grid file with the same data and settings, reuses the baseline."""
    out, cache = bench
    (baseline,) = cache.glob("baselines/*/segnet-s0")
    before = (baseline / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    grid = {
        "archs": ["segnet"], "methods": "ew", "seeds": 1, "out": str(out.parent / "other"),
        "size": "32x40", "n_train": 6, "n_val": 2, "batch_size": 6, "epochs": 1,
        "arch_args": {"width": 0.125, "depth_stages": 3}, "val_fraction": 0.34,
    }  # fmt: skip
    path = out.parent / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["bench", "--grid", str(path)]) == 0
    log = capsys.readouterr().out
    assert "1 of 2 runs already finished" in log and "baseline segnet" not in log and "cell segnet-ew-s0" in log
    assert (baseline / "summary.json").stat().st_mtime_ns == before
    assert len(list(cache.glob("baselines/*"))) == 1


def test_per_architecture_knobs_and_baseline_keys() -> None:
    values = {
        "archs": "segnet,hps",
        "methods": "ew",
        "arch_args": {"segnet": {"width": 0.125}, "hps": {"backbone": "r18"}},
    }
    grid = grid_from_values(values)
    assert grid.cell_config("segnet", "ew", 0)["arch_args"] == {"width": 0.125}
    assert grid.baseline_config("hps", 1)["arch_args"] == {"base": "hps", "base_args": {"backbone": "r18"}}
    assert grid.baseline_key("segnet") != grid.baseline_key("hps")
    assert grid.baseline_key("hps") == grid_from_values({**values, "jobs": 3, "device": "auto"}).baseline_key("hps")
    assert grid.baseline_key("hps") != grid_from_values({**values, "lr": 0.1}).baseline_key("hps")


def test_synthetic_bench_uses_the_demo_model_size_unless_told() -> None:
    demo = {"width": 0.25, "depth_stages": 4}
    grid = grid_from_values({"archs": "segnet,hps", "methods": "ew"})
    assert grid.cell_config("segnet", "ew", 0)["arch_args"] == demo
    assert grid.baseline_config("segnet", 0)["arch_args"] == {"base": "segnet", "base_args": demo}
    assert grid.cell_config("hps", "ew", 0)["arch_args"] == {}  # the demo has no knobs for hps: its defaults
    assert grid.to_dict()["arch_args"] == {"segnet": demo}  # written into bench.yaml
    told = grid_from_values({"archs": "segnet", "arch_args": {"width": 1.0}})
    assert told.cell_config("segnet", "ew", 0)["arch_args"] == {"width": 1.0}
    own = grid_from_values({"archs": "segnet", "arch_args": {"segnet": {"depth_stages": 3}}})
    assert own.cell_config("segnet", "ew", 0)["arch_args"] == {"depth_stages": 3}
    assert grid_from_values({"archs": "segnet", "dataset": "nyuv2"}).cell_config("segnet", "ew", 0)["arch_args"] == {}
    # the published benches gave the knobs on the command line: their grid is what it was
    published = grid_from_values({"archs": "segnet", "arch_args": demo, "size": "64x80", "n_train": 240})
    assert published.arch_args == {} and published.base["arch_args"] == demo


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--archs", "nosuch"], "nosuch"),
        (["--methods", "ew,nosuch"], "nosuch"),
        (["--seeds", "0"], "--seeds"),
        (["--val-fraction", "1.5"], "--val-fraction"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needle: str
) -> None:
    assert main(["bench", *args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err and not (tmp_path / "b").exists()


def test_refuses_a_directory_that_is_not_a_bench(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["bench", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bench.yaml" in err and sorted(os.listdir(tmp_path)) == ["notes.txt"]
