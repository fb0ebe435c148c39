"""Running a bench: every job is a normal Trainer run, with model selection on a carved split.

Per run: the dataset's ``train`` split (built with data seed 0, whatever the training seed) is
split once, deterministically, into a training part and a carved validation part
(``val_fraction`` of it; the same indices for every cell). The Trainer trains on the first and
validates on the second every epoch; the selected checkpoint is the epoch >= 1 whose carved
validation metrics improve most on epoch 0's, by the mean relative improvement over every metric
(Δm% of that epoch against epoch 0). Only then is the selected checkpoint evaluated on the
dataset's own ``val`` split, which a bench uses as its test split and never selects on.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from densemtl.bench.estimate import estimate_bench
from densemtl.bench.executors import Executor, LocalExecutor
from densemtl.bench.grid import DATA_SEED, Job
from densemtl.bench.processes import (
    BENCH_LOCK,
    RESUME_HINT,
    StopOnSignals,
    Stopped,
    bench_lock,
    interrupted,
    run_lock,
)
from densemtl.bench.rundir import check_bench_links, clear, finished, remove_if_empty, remove_orphan, resumable
from densemtl.data import MultiTaskDataset
from densemtl.errors import DenseMTLError, Interrupted, RuntimeFault
from densemtl.metrics import relative_improvement  # noqa: F401 - re-exported: its home before densemtl.metrics
from densemtl.paths import existing_ancestor
from densemtl.report.jsonio import dumps
from densemtl.report.progress import background_line, progress_every, ticking
from densemtl.training.builders import build_datasets
from densemtl.training.checkpoint import atomic_write_text, load_checkpoint
from densemtl.training.config import build_config
from densemtl.training.evaluation import evaluate_model
from densemtl.training.trainer import Trainer

SELECTION_RULE = (
    "each run's checkpoint is the epoch >= 1 with the highest mean relative improvement over its own epoch 0 "
    "(Δm% against epoch 0, over every metric) on a validation split carved from the training set"
)


class Holdout(Dataset):
    """The samples ``indices`` of ``base``, a dataset like it (``tasks``, ``num_classes``, ``size``;
    ``set_epoch`` sets the base's epoch)."""

    def __init__(self, base: MultiTaskDataset, indices: list[int]) -> None:
        self.base = base
        self.indices = list(indices)
        self.tasks = base.tasks
        self.num_classes = base.num_classes
        self.size = base.size
        self.task_args = getattr(base, "task_args", None)  # its tasks' metric knobs (NYUD's edge tolerance)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.base[self.indices[index]]


def carve(n: int, fraction: float, seed: int = DATA_SEED) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (train, val) indices, val about ``fraction`` of them; both non-empty.

    Deterministic in (n, fraction, seed); the indices of each part are sorted.
    """
    if n < 2:
        from densemtl.errors import ConfigError

        raise ConfigError(f"bench: the training split has {n} sample(s); carving a validation split needs >= 2")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


class BenchTrainer(Trainer):
    """A Trainer on the carved split that keeps the selected checkpoint and evaluates it on test."""

    def __init__(self, cfg: Any, out: str | Path, *, val_fraction: float, **kwargs: Any) -> None:
        self.val_fraction = val_fraction
        super().__init__(cfg, out, **kwargs)

    def build_data(self, cfg: Any) -> tuple[MultiTaskDataset, MultiTaskDataset]:
        """The carved training and validation parts of the dataset's ``train`` split, built once
        with data seed :data:`~densemtl.bench.grid.DATA_SEED`; its ``val`` split is ``test_set``."""
        full, self.test_set = build_datasets(replace(cfg, seed=DATA_SEED))
        train_idx, val_idx = carve(len(full), self.val_fraction)  # type: ignore[arg-type]
        return Holdout(full, train_idx), Holdout(full, val_idx)  # type: ignore[return-value]

    def run(self) -> dict[str, Any]:
        summary = super().run()
        best = load_checkpoint(self.best_path)  # the Trainer's best.pt: selected by the same rule
        self.model.load_state_dict(best["model"])
        selected = next(r for r in self.history if r["epoch"] == best["epoch"])
        loader = self.loader(self.test_set, shuffle=False)
        test = evaluate_model(self.model, loader, self.task_set, self.num_classes, self.device)  # the run's knobs
        summary["bench"] = {
            "selected_epoch": int(best["epoch"]),
            "selection_score": best["score"],
            "selection": SELECTION_RULE,
            "val_fraction": self.val_fraction,
            "n_train": len(self.train_set),
            "n_val_carved": len(self.val_set),
            "n_test": len(self.test_set),  # type: ignore[arg-type]
            "val_metrics": selected["val"],
            "test_metrics": test,
        }
        atomic_write_text(self.out / "summary.json", dumps(summary, indent=2) + "\n")
        return summary


def run_job(job: Job, threads: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or continue) one job and return its summary (:func:`~densemtl.bench.rundir.finished`'s);
    a finished job is only read back. Holds the run directory's lock throughout, so two processes
    never run one job; a run directory that cannot be trusted is run again from scratch."""
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(job.out)
    existed = existing_ancestor(out)
    try:
        return _run_job_locked(job, out, log)
    except DenseMTLError:
        remove_if_empty(out, up_to=existed)  # refused at its start: no empty folder it made left behind
        raise


def _run_job_locked(job: Job, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    with run_lock(out, log):
        done = finished(out)
        if done is not None:
            return done
        cfg = build_config(job.config)
        resume, why = resumable(out)
        if resume:
            (out / "summary.json").unlink(missing_ok=True)
        else:
            if why:
                log(f"densemtl bench: {job.kind} {job.name} starts again from scratch: {why}")
            clear(out)
        trainer = BenchTrainer(
            cfg, out, val_fraction=job.val_fraction, resume=resume, progress=False, log=lambda _: None
        )
        trainer.run()
        done = finished(out)
    if done is None:
        raise RuntimeFault(f"bench: {out} holds no complete run after training it; {RESUME_HINT}")
    return done


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
