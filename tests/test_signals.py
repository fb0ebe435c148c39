"""SIGTERM and SIGINT: the step finishes, a checkpoint is written, the exit status is 143 / 130 with
one line saying how to resume, and the resumed run ends as the uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from densemtl.errors import Interrupted
from densemtl.training.checkpoint import load_checkpoint
from densemtl.training.config import resolve_config
from densemtl.training.trainer import Trainer

# 16 training images in batches of 4: 4 steps per epoch, a checkpoint after each.
ARGS = [
    "--size", "32x40", "--n-train", "16", "--n-val", "2", "--batch-size", "4", "--epochs", "4",
    "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet", "--method", "rlw",
    "--checkpoint-every", "1",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "densemtl.cli.main", "train", *ARGS, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def records(run: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in json.loads(x).items() if k != "time_s"}
        for x in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_sigterm_saves_says_how_to_resume_and_resumes_exactly(tmp_path: Path) -> None:
    run, whole = tmp_path / "run", tmp_path / "whole"
    reference = train("--out", str(whole))
    proc = train("--out", str(run))
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "SIGTERM" in lines[0] and f"densemtl train --resume --out {run}" in lines[0]
    assert "Traceback" not in err
    state = load_checkpoint(run)
    assert state["epoch"] < 4
    resumed = train("--resume", "--out", str(run))
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1]
    assert reference.wait(timeout=300) == 0, reference.communicate()[1]
    assert records(run) == records(whole)


def test_sigint_in_process_stops_with_130_and_restores_the_handlers(tmp_path: Path) -> None:
    values = {"size": (32, 40), "n_train": 8, "n_val": 2, "batch_size": 4, "epochs": 2, "diagnostics_every": 0}
    t = Trainer(resolve_config({**values, "arch_args": {"width": 0.125, "depth_stages": 3}}), tmp_path / "run",
                progress=False, log=lambda _: None)  # fmt: skip
    inner = t.train_batch

    def step_then_signal(epoch: int, batch: Any) -> Any:
        result = inner(epoch, batch)
        os.kill(os.getpid(), signal.SIGINT)  # arrives during the step; the step still completes
        return result

    t.train_batch = step_then_signal  # type: ignore[method-assign]
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(Interrupted, match="SIGINT at epoch 1 step 1") as e:
        t.run()
    assert e.value.exit_code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    state = load_checkpoint(tmp_path / "run")
    assert (state["epoch"], state["step"]) == (0, 1)
