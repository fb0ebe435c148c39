"""Checkpoints hold tensors and plain values only and load with ``weights_only=True``: a file that
would run code when unpickled is refused with one line, and its code never runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MethodRun, copy_run
from densemtl import methods
from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.training.checkpoint import load_checkpoint


class _RunsCode:
    """Unpickling this calls ``os.system``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(path)
    assert not marker.exists()


def test_eval_refuses_it_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": {}, "payload": _RunsCode(marker)}, path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be read" in err
    assert not marker.exists()


def test_resume_and_predict_refuse_a_real_checkpoint_carrying_code(
    tmp_path: Path, tiny_run_trained: Path, capsys: pytest.CaptureFixture
) -> None:
    """A genuine run whose last.pt also carries a payload (the rest of the file would load and
    work): ``train --resume``, ``eval`` and ``predict`` refuse it with one line, nothing runs."""
    out = copy_run(tiny_run_trained / "run", tmp_path / "run")
    last = out / "checkpoints" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**state, "payload": _RunsCode(marker)}, last)
    image = tmp_path / "img.npy"
    np.save(image, np.random.default_rng(0).random((32, 40, 3), dtype=np.float32))
    metrics_before = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    commands = {
        "resume": ["train", "--epochs", "2", "--out", str(out), "--resume", "--quiet"],
        "eval": ["eval", "--checkpoint", str(out)],
        "predict": ["predict", "--checkpoint", str(last), str(image), "--out", str(tmp_path / "preds")],
        "export": ["export", "--checkpoint", str(out), "--out", str(tmp_path / "m.safetensors")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot be read" in err and "could run code" in err, (name, err)
        assert not marker.exists(), name
    assert not (tmp_path / "preds").exists() and not (tmp_path / "m.safetensors").exists()
    assert (out / "metrics.jsonl").read_bytes() == metrics_before


@pytest.mark.parametrize("method", methods.available())
def test_every_method_state_loads_weights_only(method: str, method_run: Callable[..., MethodRun]) -> None:
    state = load_checkpoint(method_run(method).out)  # the session's run of test_methods_train
    assert state["method"] is not None and "engine" in state
