"""Any set of dense tasks everywhere, at T = 2 … 5: every architecture, MDML, the gradient modes,
diagnostics, predict, the prediction grid, ``speed`` and ``bench`` on five synthetic tasks (seg,
depth, normal, edge, saliency), on PASCAL-Context's five (with parts) and on two (seg, edge).

The slow test trains every registered method in every gradient mode it allows at T = 5.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from densemtl import methods as method_registry
from densemtl.cli.main import main
from densemtl.data.writer_nyud import write_nyud
from densemtl.data.writer_pascal import write_pascal
from densemtl.models import MODELS, available
from densemtl.tasks import task_channels

FIVE = ("seg", "depth", "normal", "edge", "saliency")
PASCAL = ("seg", "parts", "saliency", "normal", "edge")
H, W = 32, 40
TINY = ["--size", f"{H}x{W}", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1", "--quiet"]
SEGNET = ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
SYNTH5 = ["--data-arg", "tasks=" + ",".join(FIVE)]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's figures and the bench page's plot take most of a tiny run's time; the prediction
    grid (``prediction_grid``, cheap) is still drawn and checked where a test saves it."""
    import densemtl.bench.report as report_module
    import densemtl.training.trainer as trainer_module

    for name in ("plot_run", "plot_diagnostics"):
        monkeypatch.setattr(trainer_module, name, lambda *a, **k: None)
    monkeypatch.setattr(report_module, "delta_plot_png", lambda *a, **k: b"")


@pytest.fixture(scope="module")
def pascal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pascal") / "data"
    write_pascal(root, 2, 2, (H, W), 0)
    return root


@pytest.fixture(scope="module")
def nyud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nyud") / "data"
    write_nyud(root, 2, 2, (H, W), 0)
    return root


def arch_flags(name: str) -> list[str]:
    """The architecture's tiny test knobs (declared at its ``@register``) as ``--arch-arg`` flags."""
    out = ["--arch", name]
    for key, value in MODELS.tiny(name).items():
        out += ["--arch-arg", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return out


def finite(values: Any) -> bool:
    if isinstance(values, dict):
        return all(finite(v) for v in values.values())
    return isinstance(values, int | float) and not isinstance(values, bool) and math.isfinite(values)


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def check_run(run: Path, tasks: tuple[str, ...], *, diagnostics: bool = True) -> dict[str, Any]:
    """Finite losses, weights and metrics for every task; diagnostics over every pair of tasks."""
    last = records(run)[-1]
    assert last["epoch"] == 1
    assert list(last["train_loss"]) == list(tasks) and finite(last["train_loss"]), last["train_loss"]
    assert list(last["weights"]) == list(tasks) and finite(last["weights"]), last["weights"]
    assert list(last["val"]) == list(tasks), last["val"]
    for task in tasks:
        assert last["val"][task] and finite(last["val"][task]), (task, last["val"][task])
    if diagnostics:
        T = len(tasks)
        assert len(last["grad_cosine"]) == T * (T - 1) // 2 and finite(last["grad_cosine"])
        for shares in last["layer_balance"].values():
            assert list(shares) == list(tasks) and finite(shares)
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["metrics"]) == list(tasks)
    return last


def train(run: Path, *args: str) -> None:
    assert main(["train", *TINY, "--diagnostics-every", "1", *args, "--out", str(run)]) == 0


# -- every architecture --------------------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_every_architecture_on_pascal_five_tasks_with_parts(name: str, pascal: Path, tmp_path: Path) -> None:
    from densemtl.training.checkpoint import load_model

    run = tmp_path / "run"
    data = ["--dataset", "pascal_context", "--data-root", str(pascal), "--n-train", "2"]
    train(run, *arch_flags(name), *data, "--method", "imtl")  # representation where the model has one
    check_run(run, PASCAL, diagnostics=name != "single")  # the single-task baseline shares nothing
    model, _, state = load_model(run)
    expected = task_channels(PASCAL, state["num_classes"])
    assert expected["parts"] == 7 and expected["seg"] == 21
    with torch.no_grad():
        out = model(torch.rand(1, 3, H, W))
    assert {t: v.shape[1] for t, v in out.items()} == expected


@pytest.mark.parametrize("name", available())
def test_every_architecture_on_two_tasks(name: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, *arch_flags(name), "--data-arg", "tasks=seg,edge", "--n-train", "2", "--method", "pcgrad")
    check_run(run, ("seg", "edge"), diagnostics=name != "single")


# -- T = 3 and 4 on the real layouts, augmented --------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "tasks", "method"),
    [("nyud", ("seg", "depth", "normal", "edge"), "cagrad"), ("pascal_context", ("parts", "saliency", "edge"), "dwa")],
)
def test_three_and_four_tasks_augmented(
    dataset: str, tasks: tuple[str, ...], method: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    root = request.getfixturevalue("nyud" if dataset == "nyud" else "pascal")
    run = tmp_path / "run"
    data = ["--dataset", dataset, "--data-root", str(root), "--n-train", "2", "--augment"]
    train(run, *SEGNET, *data, "--tasks", ",".join(tasks), "--method", method)
    check_run(run, tasks)


# -- gradient modes and MDML at T = 5 -----------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "mode"),
    [("upgrad", "representation"), ("nashmtl", "gramian"), ("mgda", "parameters"), ("graddrop", "representation")],
)
def test_grad_modes_at_five_tasks(method: str, mode: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, *SEGNET, *SYNTH5, "--method", method, "--grad-mode", mode)
    check_run(run, FIVE)


def test_recompute_every_at_five_tasks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, *SEGNET, *SYNTH5, "--method", "imtl", "--recompute-every", "2")
    last = check_run(run, FIVE)
    assert sum(last["weights"].values()) == pytest.approx(1.0, abs=1e-5)  # IMTL-G's weights sum to 1


@pytest.mark.parametrize(
    ("method", "data"),
    [("ew", SYNTH5), ("mgda", SYNTH5), ("upgrad", ["--dataset", "pascal_context", "--n-train", "2"])],
)
def test_mdml_at_five_tasks(method: str, data: list[str], pascal: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    if "pascal_context" in data:
        data = [*data, "--data-root", str(pascal)]
    tasks = PASCAL if "pascal_context" in data else FIVE
    train(run, *SEGNET, *data, "--method", method, "--peer-arch", "mtan", "--mimicry-temperature", "2")
    check_run(run, tasks)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("peer_metrics", "ensemble_metrics"):
        assert list(summary[key]) == list(tasks) and finite(summary[key]), key
    assert finite(records(run)[-1]["peer_train_loss"])


# -- predict, the prediction grid, eval ---------------------------------------------------------
def tiles(panel: np.ndarray, n: int, width: int = W) -> list[np.ndarray]:
    """The ``n`` tiles of a panel laid out by ``report.visualize`` (2-pixel separators)."""
    assert panel.shape[1] == n * width + 2 * (n - 1), panel.shape
    return [panel[:, i * (width + 2) : i * (width + 2) + width] for i in range(n)]


def grey(tile: np.ndarray) -> bool:
    return bool((tile[..., 0] == tile[..., 1]).all() and (tile[..., 1] == tile[..., 2]).all())


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_predict_grid_and_eval_at_five_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    train(run, *SEGNET, *SYNTH5)
    # The grid: a labelled figure of two validation samples (tests/test_pictures.py reads what it says).
    grid = read_png(run / "plots" / "predictions.png")
    assert grid.shape[0] > 2 * 2 * H and grid.shape[1] > 6 * W
    image = tmp_path / "scene.npy"
    np.save(image, np.random.default_rng(0).random((H, W, 3), dtype=np.float32))
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    panel = read_png(tmp_path / "pred" / "scene_pred.png")
    assert panel.shape == (H, 6 * W + 10, 3)
    tile = tiles(panel, 6)  # input, seg, depth, normal, edge, saliency
    assert grey(tile[4]) and grey(tile[5])  # edges and saliency: grey maps
    assert not grey(tile[1])  # segmentation: coloured
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    for column in ("mIoU", "absErr", "angMean", "odsF", "maxF"):
        assert column in out, out


def test_predict_colours_pascal_parts(pascal: Path, tmp_path: Path) -> None:
    from densemtl.tasks.seg import palette

    run = tmp_path / "run"
    train(run, *SEGNET, "--dataset", "pascal_context", "--data-root", str(pascal), "--n-train", "2")
    image = tmp_path / "photo.npy"
    np.save(image, np.random.default_rng(1).random((H, W, 3), dtype=np.float32))
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    tile = tiles(read_png(tmp_path / "pred" / "photo_pred.png"), 6)  # input, seg, parts, saliency, normal, edge
    assert {tuple(c) for c in tile[2].reshape(-1, 3)} <= {tuple(c) for c in palette(7)}  # parts: 7 colours
    assert grey(tile[3]) and grey(tile[5])  # saliency and edges: grey maps


# -- speed and bench ----------------------------------------------------------------------------
def test_speed_at_five_tasks(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    args = ["speed", "--methods", "pcgrad,imtl", "--size", f"{H}x{W}", "--batch-size", "2", "--repeats", "1"]
    args += ["--warmup", "0", *SEGNET, *SYNTH5, "--quiet", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["tasks"] == list(FIVE)
    assert result["settings"]["data_args"] == {"tasks": ",".join(FIVE)}
    rows = {r["method"]: r for r in result["results"]}
    assert set(rows) == {"ew", "pcgrad", "imtl", "naive-loop"}
    assert all(r["status"] == "ok" and r["step_ms"] > 0 for r in rows.values())


def test_speed_tasks_subset_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from densemtl.bench.speed import measure_speed

    rows = measure_speed(
        ["mgda"],
        arch_args={"width": 0.125, "depth_stages": 3},
        size=(H, W),
        batch_size=2,
        tasks=["seg", "edge"],
        data_args={"tasks": ",".join(FIVE)},
        warmup=0,
        repeats=1,
    )
    assert [r["method"] for r in rows] == ["ew", "mgda", "naive-loop"] and all(r["status"] == "ok" for r in rows)
    base = ["speed", "--methods", "mgda", "--size", f"{H}x{W}", "--quiet"]
    for extra, expected in [
        (["--tasks", "seg,edge"], "--data-arg tasks="),
        (["--data-arg", "taks=seg"], "did you mean 'tasks'"),
        (["--data-arg", "size=3"], "--data-arg size"),
    ]:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("densemtl: error:") and "\n" not in err and expected in err, err


def test_bench_tables_and_delta_m_at_five_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENSEMTL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    args = ["bench", "--methods", "mgda", "--seeds", "1", "--size", f"{H}x{W}", "--n-train", "6", "--n-val", "2"]
    args += ["--batch-size", "4", "--epochs", "1", *SEGNET, "--val-fraction", "0.34", *SYNTH5, "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["method"] for r in rows} == {"single-task", "mgda"}
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| arch |"))
    for task in FIVE:
        assert f"| {task}/" in header, (task, header)
    mgda = next(line for line in md.splitlines() if line.startswith("| segnet | mgda |"))
    cells = [c.strip() for c in mgda.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|"))
    delta = float(cells[-2].split("±")[0])
    assert math.isfinite(delta)
    for r in rows:
        assert math.isfinite(float(r["delta_m"])), r
    summary = json.loads((out / "runs" / "segnet-mgda-s0" / "summary.json").read_text())
    assert list(summary["bench"]["test_metrics"]) == list(FIVE)


# -- every method, every mode, T = 5 (slow) ------------------------------------------------------
def _method_modes() -> list[tuple[str, str]]:
    pairs = []
    for name in method_registry.available():
        for mode in method_registry.create(name).requirements.modes:
            pairs.append((name, mode))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize(("method", "mode"), _method_modes())
def test_every_method_and_mode_trains_five_tasks(method: str, mode: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run, *SEGNET, *SYNTH5, "--method", method, "--grad-mode", mode)
    check_run(run, FIVE)
