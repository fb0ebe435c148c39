"""``densemtl bench`` under faults: kill -9, a second bench beside the first, SIGINT / SIGTERM,
corrupt run directories, resumed cells' times, an abbreviated flag."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from densemtl.bench.grid import grid_from_values
from densemtl.bench.processes import RESUME_HINT, run_lock
from densemtl.bench.rundir import finished, read_history, resumable, total_time
from densemtl.cli.main import main

TINY = [
    "--size", "32x40", "--n-train", "8", "--n-val", "2", "--batch-size", "4", "--epochs", "2",
    "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--val-fraction", "0.25",
]  # fmt: skip
METHODS = ["--archs", "segnet", "--methods", "ew,mgda,pcgrad", "--seeds", "1"]
CELLS = ("segnet-ew-s0", "segnet-mgda-s0", "segnet-pcgrad-s0")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A baseline cache of this module (its single-task baseline is trained once, by ``done``)."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DENSEMTL_CACHE")
    os.environ["DENSEMTL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DENSEMTL_CACHE", None)
    else:
        os.environ["DENSEMTL_CACHE"] = old


@pytest.fixture(scope="module")
def done(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished bench: three cells and the baseline, run in this process (with one thread, as
    conftest's function-scoped fixture sets for the tests, so that reruns give the same numbers)."""
    out = tmp_path_factory.mktemp("done") / "b"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["bench", *METHODS, *TINY, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "results.csv").open()))


def bench_process(out: Path, jobs: int, methods: str = "ew,mgda,pcgrad") -> subprocess.Popen[str]:
    """``densemtl bench`` in a subprocess of its own session (its own process group)."""
    argv = ["bench", "--archs", "segnet", "--methods", methods, "--seeds", "1", *TINY, "--jobs", str(jobs)]
    return subprocess.Popen(
        [sys.executable, "-m", "densemtl.cli.main", *argv, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def wait_for_training(proc: subprocess.Popen[str], out: Path, timeout: float = 90.0) -> None:
    """Until a cell of ``out`` has begun training (its epoch-0 record is written)."""
    deadline = time.monotonic() + timeout
    while not list(out.glob("runs/*/metrics.jsonl")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no cell started training"
        time.sleep(0.05)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def gone_within(pids: set[int], seconds: float) -> set[int]:
    """The pids of ``pids`` still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if running(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@needs_proc
@pytest.mark.slow
def test_kill_9_takes_the_workers_along_and_a_second_bench_is_refused(
    done: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "b"
    grid = ["--archs", "segnet", "--methods", "ew,mgda", "--seeds", "1", *TINY]
    proc = bench_process(out, jobs=2, methods="ew,mgda")
    try:
        wait_for_training(proc, out)
        workers = descendants(proc.pid)
        assert len(workers) >= 2  # two workers (and multiprocessing's resource tracker)
        # A second bench on the same directory while the first runs: one line, exit 2, nothing touched.
        capsys.readouterr()
        assert main(["bench", *grid, "--jobs", "2", "--out", str(out)]) == 2
        err = one_line(capsys.readouterr().err)
        assert f"is being run by process {proc.pid}" in err and RESUME_HINT in err
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert not gone_within(workers, 5.0), "workers outlived the bench process"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # Started again, it finishes what was left, each run once.
    assert main(["bench", *grid, "--out", str(out)]) == 0
    got = rows(out)
    assert [(r["method"], r["seed"]) for r in got] == [("single-task", "0"), ("ew", "0"), ("mgda", "0")]
    # Runs are deterministic: the same numbers as the bench that was never killed.
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in got] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in rows(done)[:3]
    ]


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "jobs", "group"),
    [(signal.SIGINT, 2, True), (signal.SIGTERM, 1, False)],
    ids=["sigint-to-group-jobs-2", "sigterm-jobs-1"],
)
def test_a_signal_stops_the_bench_promptly(
    done: Path, tmp_path: Path, sig: signal.Signals, jobs: int, group: bool
) -> None:
    """SIGINT to the whole process group (Ctrl-C in a terminal) or SIGTERM to the bench alone:
    queued runs never start, running ones stop, one line says how to continue, exit 128 + signal."""
    out = tmp_path / "b"
    proc = bench_process(out, jobs=jobs)
    try:
        wait_for_training(proc, out)
        workers = descendants(proc.pid)
        t0 = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig, err
    line = one_line(err)
    assert sig.name in line and RESUME_HINT in line
    assert waited < 15, f"took {waited:.1f}s to stop"
    assert not gone_within(workers, 2.0)
    assert not (out / "runs" / "segnet-pcgrad-s0").exists()  # the queued run never started
    assert not (out / "results.csv").exists()


def test_corrupt_runs_are_run_again_and_rows_stay_unique(done: Path, capsys: pytest.CaptureFixture) -> None:
    before = rows(done)
    runs = done / "runs"
    ew, mgda, pcgrad = (runs / c for c in CELLS)
    (baseline,) = Path(os.environ["DENSEMTL_CACHE"]).glob("baselines/*/segnet-s0")
    kept = (baseline / "summary.json").stat().st_mtime_ns
    history = read_history(ew / "metrics.jsonl")
    assert history is not None
    ew_epochs = total_time(history[0])
    (ew / "summary.json").write_text('{"tasks": ["seg", "dep')  # torn: re-evaluated from its last.pt
    last = mgda / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated: trained again from scratch
    summary = json.loads((pcgrad / "summary.json").read_text())
    del summary["bench"]["test_metrics"]["normal"]  # a task missing: not trusted
    (pcgrad / "summary.json").write_text(json.dumps(summary))
    assert all(finished(runs / c) is None for c in CELLS)
    capsys.readouterr()
    assert main(["bench", *METHODS, *TINY, "--out", str(done)]) == 0
    log = capsys.readouterr().out
    assert "1 of 4 runs already finished, 3 to go" in log and "[4/4]" in log
    assert "cell segnet-mgda-s0 starts again from scratch: last.pt cannot be loaded" in log
    assert "ew-s0 starts again" not in log and "pcgrad-s0 starts again" not in log
    assert (baseline / "summary.json").stat().st_mtime_ns == kept
    after = rows(done)
    assert len({(r["arch"], r["method"], r["seed"]) for r in after}) == len(after) == 4
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in after] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in before
    ]
    # A cell's time is its total over every session: the resumed ew (only re-evaluated) kept its
    # training time, at least the sum of its epochs' times, which did not change.
    times = {r["method"]: float(r["time_s"]) for r in after}
    history = read_history(ew / "metrics.jsonl")
    assert history is not None and total_time(history[0]) == pytest.approx(ew_epochs, abs=0.01)
    assert times["ew"] >= ew_epochs > 0
    for cell, method in zip(CELLS, ("ew", "mgda", "pcgrad"), strict=True):
        history = read_history(runs / cell / "metrics.jsonl")
        assert history is not None and times[method] >= total_time(history[0]) > 0
    assert (done / "results.md").read_text().count("| segnet | mgda |") == 1


def test_a_torn_history_is_not_trusted(done: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(done / "runs" / CELLS[0], run)
    path = run / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the last epoch's record cut off
    assert finished(run) is None
    # Its last.pt is of the lost epoch: it cannot be continued; without the cut it could.
    assert resumable(run) == (False, "metrics.jsonl is corrupt or lacks epochs up to 2, those of last.pt")
    path.write_text(text + '{"epoch": 3, "va')
    assert resumable(run) == (True, None) and path.read_text() == text  # the torn line is dropped
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    assert resumable(run) == (False, "best.pt is missing or truncated")


def test_a_run_directory_is_run_by_one_process_at_a_time(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(1.0)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        logs: list[str] = []
        t0 = time.monotonic()
        with run_lock(run, logs.append):
            waited = time.monotonic() - t0
        assert waited > 0.3 and len(logs) == 1 and "another process is running it" in logs[0]
    finally:
        holder.wait(10)


def test_names_given_twice_are_one_column() -> None:
    grid = grid_from_values({"archs": "segnet,SEGNET", "methods": ["ew", "mgda", "ew"]})
    assert (grid.archs, grid.methods) == (["segnet"], ["ew", "mgda"])


def test_abbreviated_flag_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--seed 3`` is not ``--seeds 3``: bench sets each cell's seed itself."""
    with pytest.raises(SystemExit) as e:
        main(["bench", "--seed", "3", "--out", str(tmp_path / "b")])
    assert e.value.code == 2
    assert "--seed" in one_line(capsys.readouterr().err) and not (tmp_path / "b").exists()


def test_total_time_sums_every_epoch() -> None:
    assert total_time([{"epoch": 0, "time_s": 0.25}, {"epoch": 1, "time_s": 1.5}, {"epoch": 2}]) == 1.75
    assert math.isclose(total_time([]), 0.0)
