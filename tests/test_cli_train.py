"""End-to-end ``densemtl train`` / eval / predict / list on tiny synthetic runs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_TRAIN, copy_run
from densemtl.cli.main import main


def train(args: list[str]) -> int:
    return main(["train", *args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The tiny run (equal weighting) trained for 1 and for 2 epochs, shared by this module's tests
    (read only: copy one to change it)."""
    root = tmp_path_factory.mktemp("cli-train")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epochs in (1, 2):
            assert train([*TINY_TRAIN, "--epochs", str(epochs), "--out", str(root / f"e{epochs}")]) == 0
    finally:
        torch.set_num_threads(before)
    return {1: root / "e1", 2: root / "e2"}


def test_train_writes_the_run_directory(runs: dict[int, Path]) -> None:
    run = runs[2]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["size"] == [32, 40] and cfg["arch_args"]["width"] == 0.125
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert lines[0]["train_loss"] is None and set(lines[1]["train_loss"]) == {"seg", "depth", "normal"}
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["metrics"]) == {"seg", "depth", "normal"}
    assert set(summary["metrics"]["normal"]) == {"mean", "median", "within_11.25", "within_22.5", "within_30"}
    assert summary["metrics"] == lines[-1]["val"]
    assert (run / "checkpoints" / "last.pt").is_file()
    # ew keeps its weights constant: no weights.png (losses.png says so)
    assert {p.name for p in (run / "plots").glob("*.png")} == {
        "losses.png",
        "metrics.png",
        "predictions.png",
        "grad_cosine.png",
        "layer_balance.png",
    }


def test_refuses_to_overwrite_a_run(
    runs: dict[int, Path], tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture
) -> None:
    run = copy_run(runs[1], tmp_path / "run")
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train([*tiny_args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(run) in err and "--resume" in err
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_is_exact(runs: dict[int, Path], tmp_path: Path) -> None:
    whole, split = runs[2], copy_run(runs[1], tmp_path / "split")  # equal weighting, 2 epochs and 1
    assert train(["--out", str(split), "--resume", "--epochs", "2", "--quiet"]) == 0
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    la = [json.loads(x)["val"] for x in (whole / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["val"] for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_yaml_config_and_flag_override(tmp_path: Path, tiny_args: list[str]) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("epochs: 3\nlr: 0.01\nmethod: ew\n")
    run = tmp_path / "run"
    assert train([*tiny_args, "--config", str(conf), "--epochs", "1", "--out", str(run)]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["lr"] == 0.01


def test_eval_and_predict(runs: dict[int, Path], tmp_path: Path) -> None:
    run = runs[1]
    out_json = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(run), "--json", str(out_json)]) == 0
    metrics = json.loads(out_json.read_text())["metrics"]
    summary = json.loads((run / "summary.json").read_text())
    assert metrics == summary["metrics"]  # same data, same model: same numbers
    from densemtl import data

    img = data.create("synthetic", "val", n=1, size=(48, 64))[0]["image"]
    path = tmp_path / "scene.npy"
    import numpy as np

    np.save(path, img.permute(1, 2, 0).numpy())
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "checkpoints" / "last.pt"),
                str(path),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    from PIL import Image

    panel = Image.open(tmp_path / "pred" / "scene_pred.png")
    assert panel.size[1] == 32 and panel.size[0] > 4 * 40  # input + 3 task tiles at the run's size


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--dataset", "imagenet"], "imagenet"),
        (["--arch", "vgg"], "vgg"),
        (["--method", "magic"], "magic"),
        (["--dataset", "nyuv2"], "--data-root"),
        (["--dataset", "nyuv2", "--data-root", "/nonexistent/x"], "/nonexistent/x"),
        (["--size", "10x10"], "10x10"),
        (["--size", "big"], "big"),
        (["--arch-arg", "wdith=2"], "wdith"),
        (["--method-arg", "nope"], "nope"),
        (["--epochs", "-1"], "epochs"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture, args: list[str], needle: str
) -> None:
    run = tmp_path / "run"
    assert train([*tiny_args, *args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densemtl: error:") and "\n" not in err and needle in err
    assert "Traceback" not in err
    assert not (run / "config.yaml").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [("epochz: 3\n", "epochz"), ("lr: many\n", "lr"), ("lr: [1\n", "YAML"), ("- 1\n- 2\n", "mapping")],
)
def test_bad_yaml(tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture, text: str, needle: str) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    assert train([*tiny_args, "--config", str(conf), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train(["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no run" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic", "nyuv2", "cityscapes", "hps", "segnet", "single", "ew"):
        assert name in out


def test_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
