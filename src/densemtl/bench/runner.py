"""Running a bench: its jobs by an executor, then its reports (one job: :mod:`densemtl.bench.job`).

Every job is a normal Trainer run, with model selection on a carved split of the dataset's
``train`` split; the selected checkpoint of each is evaluated on the dataset's own ``val``
split, which a bench uses as its test split and never selects on. The baselines' runs are
cached; the reports are written once every run is done.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from densemtl.bench.estimate import estimate_bench
from densemtl.bench.executors import Executor, LocalExecutor
from densemtl.bench.grid import DATA_SEED, Job
from densemtl.bench.job import SELECTION_RULE, carve
from densemtl.bench.job import BenchTrainer as BenchTrainer  # re-exported
from densemtl.bench.job import Holdout as Holdout  # re-exported
from densemtl.bench.job import run_job as run_job  # re-exported
from densemtl.bench.locks import BENCH_LOCK, bench_lock
from densemtl.bench.processes import StopOnSignals, Stopped, interrupted
from densemtl.bench.rundir import check_bench_links, finished, remove_orphan
from densemtl.errors import DenseMTLError, Interrupted
from densemtl.metrics import relative_improvement  # noqa: F401 - re-exported: its home before densemtl.metrics
from densemtl.report.progress import background_line, progress_every, ticking
from densemtl.training.builders import build_datasets
from densemtl.training.checkpoint import atomic_write_text
from densemtl.training.config import build_config


def run_jobs(
    jobs: list[Job],
    n_procs: int = 1,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
    *,
    estimate: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run every unfinished job with ``executor`` (default: this machine, in ``n_procs`` spawned
    processes when > 1); summaries by job output path. SIGINT / SIGTERM stop it promptly with
    :class:`~densemtl.errors.Interrupted` (130 / 143), cancelling what the executor has outstanding.
    ``estimate``: on this machine, say first how long the unfinished jobs will take
    (:mod:`densemtl.bench.estimate`). Off a terminal, a progress line every
    ``$DENSEMTL_PROGRESS_EVERY`` seconds (:mod:`densemtl.report.progress`)."""
    if executor is None:
        executor = LocalExecutor(n_procs)
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = finished(Path(job.out))
        if done is not None:
            results[job.out] = done
        else:
            todo.append(job)
    total = len(jobs)
    if len(results):
        log(f"densemtl bench: {len(results)} of {total} runs already finished, {len(todo)} to go")

    seconds_left = None
    if estimate and todo and isinstance(executor, LocalExecutor):
        guess = estimate_bench(todo, executor.n_procs)
        if guess is not None:
            seconds_left = guess.seconds
            log(guess.line())
    line = background_line(len(todo), prefix="densemtl bench", unit="runs done", estimate=seconds_left)

    def report(job: Job, summary: dict[str, Any], seconds: float) -> None:
        results[job.out] = summary
        if line is not None:
            line.update(1)
        score = summary["bench"]["selection_score"]
        score_text = "nan" if score is None else f"{score:+.2f}%"
        log(
            f"[{len(results)}/{total}] {job.kind} {job.name} done in {seconds:.0f}s "
            f"(epoch {summary['bench']['selected_epoch']} selected, val improvement {score_text})"
        )

    if not todo:
        return results
    # The executor first: starting Ray installs its own SIGTERM handler, which ours must replace.
    with executor, StopOnSignals() as signals, ticking(line):
        try:
            executor.run(todo, report, log)
        except (Stopped, KeyboardInterrupt, Interrupted) as e:  # Interrupted: a trainer caught the signal
            signals.disarm()
            if isinstance(e, Stopped):
                signum = e.signum
            else:
                signum = e.exit_code - 128 if isinstance(e, Interrupted) else int(signal.SIGINT)
            raise interrupted(signum, len(results), total) from None
        except BaseException:
            signals.disarm()
            raise
    return results


def check_out(out: Path, grid_dict: dict[str, Any]) -> None:
    """``out`` must be new, empty, or a bench of the same data and settings (its ``bench.yaml``)."""
    from densemtl.errors import ConfigError
    from densemtl.training.config import load_yaml

    marker = out / "bench.yaml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if out.is_dir():
        check_bench_links(out)
    if out.is_dir() and any(p.name != BENCH_LOCK for p in out.iterdir()) and not marker.is_file():
        raise ConfigError(f"--out {out} holds other files and no bench (no bench.yaml); choose another directory")
    if marker.is_file():
        old = load_yaml(marker)
        free = ("device", "workers", "checkpoint_every")  # may change between sessions of one bench
        for key in ("base", "val_fraction", "method_args", "arch_args"):
            a, b = old.get(key), grid_dict.get(key)
            if key == "base":
                a = {k: v for k, v in (a or {}).items() if k not in free}
                b = {k: v for k, v in (b or {}).items() if k not in free}
            if a != b:
                raise ConfigError(
                    f"--out {out} holds a bench with other {key} ({old.get(key)!r}); "
                    "only archs, methods and seeds may change when continuing a bench"
                )


def run_bench(
    grid: Any, out: Path, log: Callable[[str], None] = print, executor: Executor | None = None
) -> list[dict[str, Any]]:
    """Run (or continue) ``grid`` into ``out``: baselines (cached), cells, then the reports, the
    runs by ``executor`` (default: ``grid.jobs`` local processes; see :mod:`densemtl.bench.executors`).
    Refused (one line) while another process runs the same bench directory."""
    grid_dict = grid.to_dict()
    progress_every()  # a bad $DENSEMTL_PROGRESS_EVERY is refused before anything is written
    check_out(out, grid_dict)
    preflight(grid)
    created, fresh = not out.exists(), not (out / "bench.yaml").is_file()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with bench_lock(out):  # one densemtl bench at a time in ``out``, released however this process ends
            return _run_locked(grid, grid_dict, out, log, executor or LocalExecutor(grid.jobs))
    except DenseMTLError as e:
        if fresh and e.exit_code == 2:  # refused: a fresh bench leaves no folder behind (runs that wrote stay)
            remove_orphan(out, created)
        raise


def preflight(grid: Any) -> None:
    """What every run of ``grid`` would refuse at its start, checked before the bench folder is
    made: every cell's config, and the data (its tasks, its splits, the carved validation split)."""
    cfgs = [build_config(grid.cell_config(a, m, 0)) for a in grid.archs for m in grid.methods]
    full, _ = build_datasets(replace(cfgs[0], seed=DATA_SEED))
    carve(len(full), grid.val_fraction)  # type: ignore[arg-type]


def _run_locked(
    grid: Any, grid_dict: dict[str, Any], out: Path, log: Callable[[str], None], executor: Executor
) -> list[dict[str, Any]]:
    import yaml

    from densemtl.bench.grid import cache_dir
    from densemtl.bench.report import Result, write_reports

    check_out(out, grid_dict)  # again, now that no other bench can be writing it
    atomic_write_text(out / "bench.yaml", yaml.safe_dump(grid_dict, sort_keys=False))
    jobs = grid.jobs_list(out, cache_dir())
    n_base = sum(j.kind == "baseline" for j in jobs)
    cache = Path(jobs[0].out).parent if n_base else "-"
    log(
        f"densemtl bench: {len(jobs) - n_base} cells ({len(grid.archs)} archs × {len(grid.methods)} methods × "
        f"{grid.seeds} seeds) and {n_base} single-task baseline runs (cache {cache})"
        f" into {out}, {executor.describe()}"
    )
    summaries = run_jobs(jobs, grid.jobs, log, executor, estimate=True)

    def result(job: Job) -> Result:
        s = summaries[job.out]
        return Result(
            job.arch, job.method, job.seed, s["bench"]["test_metrics"], s["bench"]["selected_epoch"], s["time_s"]
        )

    cells = [result(j) for j in jobs if j.kind == "cell"]
    baselines = [result(j) for j in jobs if j.kind == "baseline"]
    summary = write_reports(out, cells, baselines, SELECTION_RULE)
    log(f"densemtl bench: results in {out / 'results.md'}, {out / 'results.csv'}, {out / 'report.html'}")
    return summary
