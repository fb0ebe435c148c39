"""``densemtl bench --executor local|ray|slurm``: the same tables whichever ran the runs, a grid
continued by another executor, a failed remote run, a stopped bench, and the bad flags.

Ray runs on one small local instance for the whole module; Slurm through submitit's local
executor (``--slurm-cluster local``: the jobs are local processes).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from densemtl.bench.processes import RESUME_HINT
from densemtl.cli.main import main
from densemtl.data.writer import synthesize

TINY = [
    "--size", "32x40", "--n-train", "6", "--n-val", "2", "--batch-size", "6", "--epochs", "1",
    "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--val-fraction", "0.34",
]  # fmt: skip
GRID = ["--archs", "segnet", "--methods", "ew,mgda", "--seeds", "2"]
#: The columns of results.csv that time a run (they differ between any two benches).
TIMING = {"time_s"}


def bench(out: Path, cache: Path, *args: str) -> int:
    """``densemtl bench`` in this process, with its baselines cached in ``cache``."""
    old = os.environ.get("DENSEMTL_CACHE")
    os.environ["DENSEMTL_CACHE"] = str(cache)
    try:
        return main(["bench", *TINY, *args, "--out", str(out)])
    finally:
        if old is None:
            os.environ.pop("DENSEMTL_CACHE", None)
        else:
            os.environ["DENSEMTL_CACHE"] = old


def table(out: Path) -> list[dict[str, str]]:
    """The rows of ``out``'s results.csv, without the timing columns."""
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert rows and set(rows[0]) >= TIMING
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("executors")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One small local Ray instance for the module (a bench in this process uses it as it is)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local(root: Path) -> Path:
    """The 2-method × 2-seed grid and its baselines, run by ``--executor local`` in this process
    with one torch thread, as a remote run with ``--cpus-per-job 1`` has."""
    out = root / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench(out, root / "cache-local", *GRID, "--executor", "local") == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_every_executor_gives_the_same_table(
    executor: str, local: Path, root: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    """Baselines (a cache of their own, so they run remotely too) and cells: the same rows. Slurm's
    local cluster starts a Python process per run, so it runs the grid's first seed only (a baseline
    and two cells), whose rows are the local grid's rows of that seed."""
    if executor == "ray":
        request.getfixturevalue("ray_address")
        args, grid, runs = ["--executor", "ray"], GRID, 6
    else:
        pytest.importorskip("submitit")
        args = ["--executor", "slurm", "--slurm-cluster", "local", "--slurm-time-min", "10"]
        grid, runs = [*GRID[:-1], "1"], 3
    out = root / executor
    capsys.readouterr()
    assert bench(out, root / f"cache-{executor}", *grid, *args) == 0
    log = capsys.readouterr().out
    assert f"into {out}, {executor} (" in log and f"[{runs}/{runs}]" in log
    rows, expected = table(out), table(local)
    assert len(rows) == runs  # a baseline and two cells per seed
    if runs == len(expected):
        assert rows == expected
        assert (out / "results.md").read_text() == (local / "results.md").read_text()  # it holds no times
    else:
        seed0 = [r for r in expected if r["seed"] == "0"]  # delta_m: against the mean of the seeds' baselines
        assert len(seed0) == runs
        diff = [(k, r[k], e[k]) for r, e in zip(rows, seed0, strict=True) for k in r if k != "delta_m" and r[k] != e[k]]
        assert not diff, diff
    if executor == "slurm":  # submitit really ran them: one job (its pickles and logs) per run
        assert len(list((out / ".submitit").glob("*_0_result.pkl"))) == runs


@pytest.mark.slow
def test_a_grid_begun_locally_is_finished_on_ray(
    local: Path, root: Path, ray_address: str, capsys: pytest.CaptureFixture
) -> None:
    out = root / "mixed"
    assert bench(out, root / "cache-local", "--archs", "segnet", "--methods", "ew", "--seeds", "2") == 0
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert len(finished) == 2
    capsys.readouterr()
    assert bench(out, root / "cache-local", *GRID, "--executor", "ray") == 0
    log = capsys.readouterr().out
    assert "4 of 6 runs already finished, 2 to go" in log and "[6/6]" in log
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # read back, not run again
    assert table(out) == table(local)


def test_a_failed_remote_run_is_one_line_and_the_others_run_on(
    root: Path, ray_address: str, capsys: pytest.CaptureFixture
) -> None:
    out = root / "failing"
    data = root / "late-bad-data"  # passes the bench's own checks (its first samples), fails in the runs
    synthesize(data, 6, 2, (32, 40), 0)
    label = data / "train" / "label" / "5.npy"
    np.save(label, np.full_like(np.load(label), 20.0))  # a class id the 7-class set does not have
    args = ["--archs", "segnet", "--methods", "ew", "--seeds", "1", "--dataset", "nyuv2", "--data-root", str(data)]
    capsys.readouterr()
    assert bench(out, root / "cache-failing", *args, "--executor", "ray") == 2  # the runs' own DataError
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith("densemtl: error: bench: ") and " segnet-" in line and " failed on ray: " in line
    assert "5.npy" in line and "(and 1 more runs failed)" in line and RESUME_HINT in line
    for run in ("baseline segnet-single-task-s0", "cell segnet-ew-s0"):  # each reported as it ended
        assert f"{run} failed on ray" in captured.out
    assert not (out / "results.csv").exists()


def sigterm_while_training(argv: list[str], out: Path, cache: Path, started: list[tuple[Path, str]]) -> tuple[int, str]:
    """Run ``densemtl ARGV --out OUT`` (baselines cached in CACHE) in a subprocess, send it SIGTERM
    once a run has started training (one of the ``started`` (folder, glob) pairs finds a file),
    and return its exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "densemtl.cli.main", *argv, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DENSEMTL_CACHE": str(cache)},
    )
    try:
        deadline = time.monotonic() + 90
        while not any(list(folder.glob(pattern)) for folder, pattern in started):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run started training"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def test_a_signal_cancels_the_ray_tasks(root: Path, ray_address: str) -> None:
    """SIGTERM to a bench on a Ray cluster (reached by --ray-address): its tasks are cancelled, one
    line says how to continue, exit 143; the cluster's CPUs are free again."""
    import ray

    out = root / "stopped"
    cache = root / "cache-stopped"
    argv = ["bench", *GRID, *TINY, "--epochs", "3", "--executor", "ray", "--ray-address", ray_address]
    returncode, err = sigterm_while_training(argv, out, cache, [(cache, "baselines/*/*/metrics.jsonl")])
    assert returncode == 143, err
    lines = [x for x in err.splitlines() if x.startswith("densemtl")]  # Ray logs its own lines too
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "SIGTERM" in lines[0] and RESUME_HINT in lines[0]
    assert not (out / "runs" / "segnet-mgda-s1").exists()  # queued behind the baselines: never started
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, "the cancelled tasks still hold the cluster's CPUs"
        time.sleep(0.2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_signal_cancels_the_submitit_jobs(root: Path) -> None:
    """SIGTERM to a bench whose jobs submitit runs (its local executor: one controller process per
    job, named by its pid in OUT/.submitit) while they train: exit 143, one line, and every job's
    process ends at once (submitit's jobs ignore SIGTERM, so a cancel must not rely on it)."""
    pytest.importorskip("submitit")
    out = root / "stopped-slurm"
    cache = root / "cache-stopped-slurm"
    argv = ["bench", *GRID, *TINY, "--epochs", "3", "--executor", "slurm", "--slurm-cluster", "local"]
    returncode, err = sigterm_while_training(
        argv, out, cache, [(cache, "baselines/*/*/metrics.jsonl"), (out, "runs/*/metrics.jsonl")]
    )
    assert returncode == 143, err
    assert "SIGTERM" in one_line(err) and RESUME_HINT in err
    controllers = {int(p.name.split("_")[0]) for p in out.glob(".submitit/*_submitted.pkl")}
    assert len(controllers) == 6
    deadline = time.monotonic() + 8  # submitit stops a job with SIGINT, then SIGKILL 1 s later
    while alive := {pid for pid in controllers if _running(pid)}:
        assert time.monotonic() < deadline, f"submitit's job processes {alive} outlived the bench"
        time.sleep(0.2)
    finished = list(cache.glob("baselines/*/*/summary.json")) + list(out.glob("runs/*/summary.json"))
    assert len(finished) < 6  # the cancelled ones did not train on


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize(("executor", "module", "line"), [("ray", "ray", "Ray"), ("slurm", "submitit", "submitit")])
def test_a_missing_package_is_one_line_exit_2(
    executor: str,
    module: str,
    line: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # ``import ray`` now raises ImportError
    extra = "ray" if executor == "ray" else "slurm"
    assert main(["bench", "--executor", executor, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    needs = f"densemtl bench --executor {executor} needs {line}: pip install 'densemtl[{extra}]'"
    assert err == f"densemtl: error: {needs}\n"
    assert not (tmp_path / "b").exists()


BAD: list[tuple[list[str], str]] = [
    (["--ray-address", "localhost:6379"], "--ray-address is for --executor ray; add --executor ray or leave it out"),
    (["--executor", "slurm", "--ray-address", "auto"], "--ray-address is for --executor ray"),
    (["--executor", "ray", "--slurm-partition", "gpu"], "--slurm-partition is for --executor slurm"),
    (["--slurm-cluster", "local"], "--slurm-cluster is for --executor slurm"),
    (["--cpus-per-job", "4"], "--cpus-per-job is for --executor ray or slurm"),
    (["--executor", "ray", "--cpus-per-job", "0"], "--cpus-per-job must be an integer >= 1, got 0"),
    (["--executor", "ray", "--gpus-per-job", "nan"], "--gpus-per-job must be a number >= 0, got nan"),
    (["--executor", "ray", "--ray-address", " "], "--ray-address is empty"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "no Ray cluster answers there"),
    (["--executor", "ray", "--gpus-per-job", "1"], "the runs train on --device cpu; add --device cuda"),
    (["--executor", "ray", "--device", "cuda"], "--device cuda needs a GPU per run on ray; add --gpus-per-job 1"),
    (["--executor", "slurm", "--device", "cuda", "--gpus-per-job", "0.5"], "must be a whole number"),
    (["--executor", "slurm", "--slurm-cluster", "local", "--slurm-time-min", "0"], "--slurm-time-min must be"),
    (["--executor", "slurm", "--slurm-cluster", "local", "--slurm-arg", "account"], "must be key=value"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_executor_flags_are_one_line_exit_2(
    args: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["bench", *args, "--out", str(tmp_path / "b")]) == 2
    err = one_line(capsys.readouterr().err)
    assert needle in err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args", [["--executor", "foo"], ["--slurm-cluster", "pbs"]])
def test_unknown_executor_is_argparse_one_line(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", *args, "--out", str(tmp_path / "b")])
    assert e.value.code == 2
    assert "invalid choice" in one_line(capsys.readouterr().err) and not (tmp_path / "b").exists()


def test_slurm_without_sbatch_says_where_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, whatever this machine has
    assert main(["bench", "--executor", "slurm", "--out", str(tmp_path / "b")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "sbatch and srun not on this machine's PATH" in err and "--slurm-cluster local" in err


def test_slurm_options_reach_the_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Slurm cluster would get: submitit's own sbatch script, with stand-ins for sbatch and
    srun on the PATH (nothing is submitted: the array is caught on its way)."""
    submitit = pytest.importorskip("submitit")
    from densemtl.bench import executors

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    seen: dict[str, Any] = {}

    def catch(self: Any, fn: Any, *columns: list[Any]) -> list[str]:
        seen.update(script=self._executor._make_submission_file_text("COMMAND", "uid"), columns=columns)
        return [f"7_{i}" for i in range(len(columns[0]))]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", catch)
    slurm = {"partition": "gpu", "time_min": 90, "extra": {"account": "proj", "mem": "32G"}}
    ex = executors.make_executor("slurm", tmp_path / "b", cpus=4, gpus=1, slurm=slurm, device="cuda")
    handles = ex.submit(["job-a", "job-b"])  # type: ignore[attr-defined]
    assert list(handles.values()) == ["job-a", "job-b"]
    lines = set(seen["script"].splitlines())
    for option in ("partition=gpu", "time=90", "cpus-per-task=4", "gpus-per-node=1", "account=proj", "mem=32G"):
        assert f"#SBATCH --{option}" in lines, seen["script"]
    assert any(line.startswith("#SBATCH --signal=USR2@") for line in lines)  # time-outs are requeued
    assert str(tmp_path / "b" / ".submitit") in seen["script"]
    assert seen["columns"][2] == [4, 4]  # torch threads per run = its CPUs
