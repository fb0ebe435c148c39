"""The real frames of shared/data through the whole user path: preprocess → train → eval → predict.

Each frame is converted the way the standard preprocessing does (``densemtl.data.preprocess``),
written to a temporary MTAN layout as both train/0 and val/0, and then used only through the CLI
entry point, so real value ranges (metric depth in metres, void labels, invalid normals or depth)
reach the loaders, losses, metrics, checkpoints and prediction images. The frames are resized on
load to small sizes (``--size``) to keep CPU training fast.

A task whose targets are invalid everywhere (this NYUv2 frame has no normals, this Cityscapes
frame no disparity) has no valid pixel, and ``densemtl.metrics`` documents that such a metric is
NaN; the trainer and ``eval`` write it as such. Tests accept NaN or ``null`` for those metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from densemtl import tasks
from densemtl.cli.main import main
from densemtl.data.preprocess import cityscapes_frame, nyuv2_frame, write_frame

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NYU = DATA / "nyuv2-test-1407"
CS = DATA / "cityscapes-frankfurt_000000_000294"
CS_STEM = "frankfurt_000000_000294"
NYU_SIZE = (48, 64)
CS_SIZE = (32, 64)
TINY_MODEL = ["--arch", "segnet", "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]


def _require(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"real frame not found at {path} (shared/data is absent)")


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            return np.array(im, dtype=np.uint16)
        return np.array(im)


def _missing(value: Any) -> bool:
    """A metric with no valid pixel: NaN (what densemtl.metrics gives) or null (strict JSON)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _finite(metrics: dict[str, float]) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def _same_metrics(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    """Equal task by task and metric by metric, a missing value (NaN/null) equal to another."""
    assert {t: set(m) for t, m in a.items()} == {t: set(m) for t, m in b.items()}
    for task, ms in a.items():
        for name, value in ms.items():
            other = b[task][name]
            if _missing(value) or _missing(other):
                assert _missing(value) and _missing(other), (task, name, value, other)
            else:
                assert other == pytest.approx(value, rel=1e-9, abs=1e-12), (task, name)


def _refuse(token: str) -> None:
    """``parse_constant`` hook: NaN, Infinity and -Infinity are not standard JSON (RFC 8259)."""
    raise ValueError(f"{token} is not valid JSON")


def _strict_json(text: str) -> Any:
    """Parse ``text`` as standard JSON, refusing the NaN/Infinity that ``json.dumps`` writes."""
    return json.loads(text, parse_constant=_refuse)


def _train(root: Path, dataset: str, size: tuple[int, int], run: Path) -> dict[str, Any]:
    args = ["train", "--dataset", dataset, "--data-root", str(root), "--size", f"{size[0]}x{size[1]}"]
    args += ["--epochs", "1", "--batch-size", "1", *TINY_MODEL, "--out", str(run), "--quiet"]
    assert main(args) == 0
    return json.loads((run / "summary.json").read_text())


def _eval(run: Path, out_json: Path) -> dict[str, dict[str, Any]]:
    assert main(["eval", "--checkpoint", str(run), "--json", str(out_json)]) == 0
    return json.loads(out_json.read_text())["metrics"]


def _predict(run: Path, image: Path, out: Path) -> Image.Image:
    assert main(["predict", "--checkpoint", str(run), str(image), "--out", str(out)]) == 0
    path = out / f"{image.stem}_pred.png"
    assert path.is_file()
    return Image.open(path)


@pytest.fixture(scope="module")
def nyu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The NYUv2 frame (filled depth, 13 classes, no normals) as train/0 and val/0, trained 1 epoch."""
    _require(NYU)
    base = tmp_path_factory.mktemp("nyu")
    arrays = nyuv2_frame(_png(NYU / "rgb.png"), _png(NYU / "depth_filled_mm.png"), _png(NYU / "label13.png"))
    for split in ("train", "val"):
        write_frame(arrays, base / "data", split, 0)
    run = base / "run"
    return run, _train(base / "data", "nyuv2", NYU_SIZE, run)


@pytest.fixture(scope="module")
def cs_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The Cityscapes frame (7 categories, no disparity) as train/0 and val/0, trained 1 epoch."""
    _require(CS)
    base = tmp_path_factory.mktemp("cs")
    rgb, ids = _png(CS / f"{CS_STEM}_leftImg8bit.png"), _png(CS / f"{CS_STEM}_gtFine_labelIds.png")
    arrays = cityscapes_frame(rgb, ids, num_classes=7)
    for split in ("train", "val"):
        write_frame(arrays, base / "data", split, 0, label_dir="label_7")
    run = base / "run"
    return run, _train(base / "data", "cityscapes", CS_SIZE, run)


def test_nyuv2_train_summary(nyu_run: tuple[Path, dict[str, Any]]) -> None:
    run, summary = nyu_run
    assert summary["tasks"] == ["seg", "depth", "normal"] and summary["num_classes"] == 13
    assert summary["epochs"] == 1 and (run / "checkpoints" / "last.pt").is_file()
    metrics = summary["metrics"]
    assert {t: set(m) for t, m in metrics.items()} == {t: set(tasks.create(t).metric_names) for t in summary["tasks"]}
    assert _finite(metrics["seg"]) and _finite(metrics["depth"])
    assert 0.0 <= metrics["seg"]["miou"] <= 1.0 and 0.0 <= metrics["seg"]["pix_acc"] <= 1.0
    # Depth in metres (1.9-9.5 m in this frame): an untrained head is off by metres, not by 1000s.
    assert 0.0 < metrics["depth"]["abs_err"] < 20.0 and metrics["depth"]["rel_err"] > 0.0
    assert all(_missing(v) for v in metrics["normal"].values())  # no normals: no valid pixel
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    losses = lines[1]["train_loss"]
    assert math.isfinite(losses["seg"]) and math.isfinite(losses["depth"]) and losses["depth"] > 0.0
    assert losses["normal"] == 0.0  # the masked loss of a task with no valid pixel


def test_nyuv2_eval_matches_summary(nyu_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, summary = nyu_run
    _same_metrics(summary["metrics"], _eval(run, tmp_path / "eval.json"))


def test_nyuv2_predict_on_the_raw_png(nyu_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = nyu_run
    panel = _predict(run, NYU / "rgb.png", tmp_path / "pred")  # 425×560, resized to the run's size
    assert panel.mode == "RGB" and panel.size[1] == NYU_SIZE[0]
    assert 4 * NYU_SIZE[1] < panel.size[0] < 5 * NYU_SIZE[1]  # input, seg, depth, normal tiles
    tiles = np.asarray(panel)
    assert tiles[:, : NYU_SIZE[1]].std() > 5.0  # the input tile shows the image


def test_cityscapes_train_eval_predict(cs_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, summary = cs_run
    assert summary["tasks"] == ["seg", "depth"] and summary["num_classes"] == 7
    metrics = summary["metrics"]
    assert set(metrics) == {"seg", "depth"} and _finite(metrics["seg"])
    assert all(_missing(v) for v in metrics["depth"].values())  # no disparity: no valid depth pixel
    _same_metrics(metrics, _eval(run, tmp_path / "eval.json"))
    panel = _predict(run, CS / f"{CS_STEM}_leftImg8bit.png", tmp_path / "pred")
    assert panel.size[1] == CS_SIZE[0] and 3 * CS_SIZE[1] < panel.size[0] < 4 * CS_SIZE[1]  # input, seg, depth


def test_run_files_are_strict_json(nyu_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run, _ = nyu_run
    _strict_json((run / "summary.json").read_text())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    assert main(["eval", "--checkpoint", str(run), "--json", str(tmp_path / "e.json")]) == 0
    _strict_json((tmp_path / "e.json").read_text())


def test_data_synth_then_train_as_nyuv2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = tmp_path / "synth"
    synth = ["data", "synth", "--out", str(d), "--n-train", "4", "--n-val", "2", "--size", "32x40"]
    assert main(synth) == 0
    assert json.loads((d / "densemtl.json").read_text())["num_classes"] == 7
    run = tmp_path / "run"
    args = ["train", "--dataset", "nyuv2", "--data-root", str(d), "--epochs", "1", "--batch-size", "2"]
    assert main([*args, *TINY_MODEL, "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_classes"] == 7 and summary["tasks"] == ["seg", "depth", "normal"]
    assert all(_finite(summary["metrics"][t]) for t in ("seg", "depth", "normal"))
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    capsys.readouterr()
    assert main(synth) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densemtl: error:") and "\n" not in err and str(d) in err
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before
