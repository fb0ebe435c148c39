"""Faults injected from outside: ``kill -9`` of a training run at random moments, kills in the
middle of checkpoint writes, and a disk that fills up. After each, the run resumes to the same
metrics as if nothing had happened, and no half-written file is ever picked up."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from densemtl.cli.main import main
from densemtl.training.checkpoint import load_checkpoint, save_checkpoint

# Eight optimizer steps per epoch, so that kills land before, inside and between epochs.
RUN = [
    "--size",
    "32x40",
    "--n-train",
    "32",
    "--n-val",
    "4",
    "--batch-size",
    "4",
    "--epochs",
    "5",
    "--arch-arg",
    "width=0.125",
    "--arch-arg",
    "depth_stages=3",
    "--quiet",
]


def _env() -> dict[str, str]:
    """One thread in every child (the numbers must not depend on the thread count)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_cmd(out: Path, extra: list[str]) -> list[str]:
    """``train`` of ``RUN`` into ``out``; ``--resume`` once the run directory exists."""
    cmd = [sys.executable, "-m", "densemtl.cli.main", "train", *RUN, *extra, "--out", str(out)]
    return [*cmd, "--resume"] if out.exists() else cmd


def _records(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock times: what must match between runs."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def _checkpoint_every() -> list[str]:
    """``--checkpoint-every 1`` where train has the flag (mid-epoch checkpoints), else nothing."""
    from densemtl.cli.spec_flags import flag_fields

    return ["--checkpoint-every", "1"] if any(f == "--checkpoint-every" for _, f, _ in flag_fields()) else []


def _check_consistent(run: Path) -> tuple[int, int] | None:
    """What a kill may leave: a loadable last.pt (or none yet) and a metrics.jsonl of whole lines.
    Returns the checkpoint's (epoch, step), None without one."""
    if (run / "metrics.jsonl").exists():
        _records(run)
    last = run / "checkpoints" / "last.pt"
    if not last.exists():
        return None
    state = load_checkpoint(last)
    assert not list(last.parent.glob("*.tmp")), "a stale temp file survived a load"
    return int(state["epoch"]), int(state.get("step") or 0)


def _start(cmd: list[str]) -> tuple[subprocess.Popen[str], float]:
    """Start ``cmd`` and wait for its "densemtl: training" line (the run about to start): the
    process and the time of that line."""
    child = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("densemtl: training"):
            break
    return child, time.perf_counter()


def _finish(child: subprocess.Popen[str], timeout: float | None = None) -> tuple[int, str]:
    """Wait for ``child`` (``TimeoutExpired`` after ``timeout`` s): its status and its stderr."""
    _, err = child.communicate(timeout=timeout)
    return child.returncode, err


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    extra = _checkpoint_every()
    ref = tmp_path / "ref"
    child, started = _start(_train_cmd(ref, extra))
    assert child.stdout is not None
    span = 0.0  # from the "training" line to the last epoch's row: where the kills land
    for line in child.stdout:
        if line[:6].strip().isdigit():
            span = time.perf_counter() - started
    status, err = _finish(child, timeout=300)
    assert status == 0 and span > 0, err

    run, rng, kills = tmp_path / "run", random.Random(11), []
    for _ in range(3):
        child, started = _start(_train_cmd(run, extra))
        delay = rng.uniform(0.0, span)
        try:
            status, err = _finish(child, timeout=max(0.0, started + delay - time.perf_counter()))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.communicate()
            kills.append((round(delay, 1), _check_consistent(run)))  # (s after start, (epoch, step) kept)
        else:
            assert status == 0, err
            _check_consistent(run)
    status, err = _finish(
        subprocess.Popen(
            _train_cmd(run, extra), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        ),
        timeout=300,
    )
    assert status == 0, (kills, err)
    assert len(kills) >= 2, f"too few kills landed ({kills}) to test anything"
    assert _records(run) == _records(ref), kills
    ours, theirs = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
    assert {k: v for k, v in ours.items() if k != "time_s"} == {k: v for k, v in theirs.items() if k != "time_s"}


def _save_forever(path: Path, first: int) -> None:
    """In a forked child: checkpoint ``first, first+1, ...`` onto ``path`` until killed."""
    try:
        torch.set_num_threads(1)
        k = first
        while True:
            save_checkpoint(path, _big_state(k))
            k += 1
    finally:
        os._exit(0)


def _big_state(k: int) -> dict[str, Any]:
    """16 MB, every value ``k``: a torn mix of two saves would show."""
    return {"config": {}, "model": {"a": torch.full((2_000_000,), float(k)), "b": torch.full((2_000_000,), k)}, "k": k}


def test_kills_during_checkpoint_writes_never_leave_an_unloadable_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, _big_state(0))
    rng, seen, mid_write = random.Random(5), 0, 0
    for _ in range(12):
        pid = os.fork()
        if pid == 0:
            _save_forever(path, seen + 1)
        time.sleep(rng.uniform(0.05, 0.8))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        mid_write += bool(list(path.parent.glob("*.tmp")))
        state = load_checkpoint(path)
        k = state["k"]
        assert k >= seen
        assert torch.equal(state["model"]["a"], torch.full((2_000_000,), float(k)))
        assert torch.equal(state["model"]["b"], torch.full((2_000_000,), k))
        assert not list(path.parent.glob("*.tmp")), "load_checkpoint left a dead writer's temp file"
        seen = k
    assert mid_write >= 3, f"only {mid_write} of 12 kills landed during a write"
    assert seen > 0


# -- a disk that fills up -----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root with mount rights only: skipped elsewhere)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` bytes free; returns the filler to delete."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_stops_with_one_line_and_resumes(
    small_disk: Path, tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture
) -> None:
    base = [*tiny_args, "--n-train", "4", "--diagnostics-every", "0"]
    ref = tmp_path / "ref"
    assert main(["train", *base, "--epochs", "2", "--out", str(ref)]) == 0
    run = small_disk / "run"
    assert main(["train", *base, "--out", str(run)]) == 0
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    filler = _fill(small_disk, leave=64 * 1024)  # room for metrics.jsonl, not for a checkpoint
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on device" in err, err
    assert str(run) in err
    assert last.read_bytes() == before and load_checkpoint(last)["epoch"] == 1
    _records(run)  # whole lines
    assert not list(run.rglob("*.tmp"))
    filler.unlink()
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert _records(run) == _records(ref)
