"""Every piece of a run's saved state is checked before ``train --resume`` loads it, and a
checkpoint with NaN or inf weights is refused by every command (issue 21): each bad piece is one
line naming RUN/checkpoints/last.pt and the field, exit 2, and the checkpoint is left as it was."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from densemtl.cli.main import main

pytestmark = pytest.mark.usefixtures("no_plots")


@pytest.fixture
def run(tiny_run_trained: Path, tmp_path: Path) -> Path:
    """A copy of the session's run trained one epoch (2 steps: the optimizer has state)."""
    shutil.copytree(tiny_run_trained / "run", tmp_path / "run")
    return tmp_path / "run"


def edit_last(run: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


def one_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("densemtl: error: ") and err.count("\n") == 1 and "Traceback" not in out + err, err
    return err


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda s: s.__setitem__(key, value)


def _group(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda s: s["optimizer"]["param_groups"][0].__setitem__(key, value)


def _moment(s: dict[str, Any]) -> None:
    entry = next(iter(s["optimizer"]["state"].values()))
    name = next(k for k in entry if k != "step")
    entry[name] = torch.zeros(3, 1, 7)


def _nan_weights(s: dict[str, Any]) -> None:
    for v in s["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def _rng_python(s: dict[str, Any]) -> None:
    s["rng"]["python"]["state"] = torch.zeros(3, dtype=torch.int64)  # a Mersenne state of 3 words


STATE = [
    ("history", _set("history", "abc"), "'history' must be a list of epoch records"),
    ("step", _set("step", -5), "'step' must be an integer >= 0, got -5"),
    ("elapsed_s", _set("elapsed_s", "long"), "'elapsed_s' must be a finite number >= 0"),
    ("optimizer", _set("optimizer", {"state": {}, "param_groups": []}), "damaged 'optimizer' (0 parameter groups"),
    ("optimizer", _set("optimizer", 5), "holds no 'optimizer' state"),
    ("lr", _group("lr", "fast"), "damaged 'optimizer.param_groups[0]' (lr: a finite number expected, got 'fast')"),
    ("lr", _group("lr", -1.0), "damaged 'optimizer.param_groups[0].lr' (a finite number >= 0 expected, got -1.0)"),
    ("betas", _group("betas", [0.9]), "damaged 'optimizer.param_groups[0]' (betas: a list of 2 expected"),
    ("moment", _moment, "damaged 'optimizer.state[0]."),
    ("scheduler", lambda s: s["scheduler"].__setitem__("step", 5), "entry 'step' is not a setting of a scheduler"),
    ("scheduler", lambda s: s["scheduler"].__setitem__("last_epoch", "abc"), "damaged 'scheduler' (last_epoch:"),
    ("rng", _set("rng", {"python": 5}), "damaged 'rng' (the random generators' state is incomplete)"),
    ("rng", _rng_python, "damaged 'rng' ("),
    ("guard", _set("guard", [1, 2]), "damaged 'guard' (a mapping expected, got [1, 2])"),
    ("guard", _set("guard", {"skipped": "many"}), "damaged 'guard' (skipped: a finite number expected"),
    ("engine", lambda s: s["engine"].__setitem__("step", "abc"), "damaged 'engine' (step: a finite number expected"),
    ("method_generator", _set("method_generator", torch.zeros(2)), "damaged 'method_generator'"),
    ("config", lambda s: s["config"].__setitem__("lr", "fast"), "(config key 'lr' must be a number, got 'fast')"),
    ("config", lambda s: s["config"].__setitem__("lr", 0.5), "and the run's config.yaml disagree on 'lr' (0.5 vs"),
    ("config", _set("config", [1]), "'config' must be a mapping, got list"),
    ("weights", _nan_weights, "holds NaN or inf values"),
]


@pytest.mark.parametrize(("field", "edit", "message"), STATE, ids=[f"{f[0]}-{i}" for i, f in enumerate(STATE)])
def test_bad_piece_of_the_saved_state_is_one_line_naming_last_pt(
    run: Path, capsys: pytest.CaptureFixture, field: str, edit: Callable, message: str
) -> None:
    path = edit_last(run, edit)
    before = path.read_bytes()
    err = one_line(capsys, ["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"])
    assert f"{path}" in err and message in err, err
    assert path.read_bytes() == before  # nothing trained, nothing saved over it


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_nan_weights_are_refused_naming_the_file_and_the_tensor(
    tiny_run_trained: Path, run: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    path = edit_last(run, _nan_weights)
    out = run.parent / "out"
    img = run.parent / "x.npy"
    np.save(img, np.random.default_rng(0).random((32, 40, 3)).astype(np.float32))
    argv = {
        "eval": ["eval", "--checkpoint", str(run), "--n", "2", "--data-root", str(tiny_run_trained / "data")],
        "predict": ["predict", "--checkpoint", str(run), "--out", str(out), str(img)],
        "export": ["export", "--checkpoint", str(run), "--out", str(out)],
    }[command]
    err = one_line(capsys, argv)
    named = path if command == "export" else run  # eval and predict name the run as given, as their other errors
    assert f"checkpoint {named}: weight '" in err and "holds NaN or inf values" in err, err
    assert not out.exists()


def test_nan_weights_in_an_export_are_refused(run: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    export = run.parent / "m.safetensors"
    assert main(["export", "--checkpoint", str(run), "--out", str(export)]) == 0
    with safe_open(str(export), framework="pt") as f:
        meta = dict(f.metadata())
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    first = sorted(k for k, v in weights.items() if v.is_floating_point() and "running" not in k)[0]
    weights[first] = torch.full_like(weights[first], float("inf"))
    save_file(weights, str(export), metadata=meta)
    img = run.parent / "x.npy"
    np.save(img, np.zeros((32, 40, 3), dtype=np.float32))
    err = one_line(capsys, ["predict", "--checkpoint", str(export), "--out", str(run.parent / "p"), str(img)])
    assert f"checkpoint {export}: weight " in err and "NaN or inf" in err, err


def test_a_foreign_pickle_gives_one_line_and_no_torch_warning(run: Path, capsys: pytest.CaptureFixture) -> None:
    path = run / "checkpoints" / "last.pt"
    # a plain pickle (protocol 4) of an object of a class in a module this process does not have
    path.write_bytes(b"\x80\x04cplanted_module\nMarker\n)\x81.")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        err = one_line(capsys, ["eval", "--checkpoint", str(run), "--n", "2"])
    assert "could run code (refused)" in err, err
    assert not seen, [str(w.message) for w in seen]


def test_integer_weights_in_an_export_are_refused_not_cast(run: Path, capsys: pytest.CaptureFixture) -> None:
    """load_state_dict would copy an int64 tensor into a float weight without a word."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    export = run.parent / "m.safetensors"
    assert main(["export", "--checkpoint", str(run), "--out", str(export)]) == 0
    with safe_open(str(export), framework="pt") as f:
        meta = dict(f.metadata())
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    first = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[first] = weights[first].to(torch.int64)
    save_file(weights, str(export), metadata=meta)
    img = run.parent / "x.npy"
    np.save(img, np.zeros((32, 40, 3), dtype=np.float32))
    err = one_line(capsys, ["predict", "--checkpoint", str(export), "--out", str(run.parent / "p"), str(img)])
    assert f"checkpoint {export}: tensor {first!r} holds int64 values where architecture 'segnet' has float32" in err


def test_no_history_in_the_checkpoint_and_none_in_metrics_is_refused(run: Path, capsys: pytest.CaptureFixture) -> None:
    """An old checkpoint (no 'history') falls back on metrics.jsonl: records it lacks are refused, not lost."""
    path = edit_last(run, lambda s: s.pop("history"))
    (run / "metrics.jsonl").write_text('{"epoch": "zero"}\n')
    err = one_line(capsys, ["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"])
    assert f"{path} holds no 'history' and {run / 'metrics.jsonl'} has no record of epoch 0" in err, err


def test_a_folder_in_place_of_summary_json_is_refused_before_training(run: Path, capsys: pytest.CaptureFixture) -> None:
    (run / "summary.json").unlink()
    (run / "summary.json").mkdir()
    before = (run / "checkpoints" / "last.pt").read_bytes()
    err = one_line(capsys, ["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"])
    assert f"--resume: {run / 'summary.json'} is a folder where the run writes its summary.json" in err, err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
