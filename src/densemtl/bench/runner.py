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

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from densemtl.bench.grid import DATA_SEED, Job
from densemtl.data import MultiTaskDataset
from densemtl.metrics import Metrics, lower_is_better
from densemtl.report.jsonio import dumps
from densemtl.training.builders import build_datasets
from densemtl.training.config import build_config
from densemtl.training.evaluation import evaluate_model
from densemtl.training.trainer import Trainer, is_run_dir

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


def relative_improvement(metrics: Metrics, reference: Metrics) -> float:
    """Mean over shared metrics of the signed relative change vs ``reference``, in percent.

    Like :func:`densemtl.metrics.delta_m`, but skips metrics that are NaN or whose reference is 0
    (an untrained model's within-11.25° can be 0); NaN when nothing is left.
    """
    terms: list[float] = []
    for task, ms in metrics.items():
        for name, value in ms.items():
            ref = reference.get(task, {}).get(name)
            lower = lower_is_better(task, name)  # the direction the task declares
            if ref is None or lower is None or value is None or ref == 0 or math.isnan(value) or math.isnan(ref):
                continue
            terms.append((-1.0 if lower else 1.0) * (value - ref) / abs(ref) * 100.0)
    return math.fsum(terms) / len(terms) if terms else float("nan")


class BenchTrainer(Trainer):
    """A Trainer on the carved split that keeps the selected checkpoint and evaluates it on test."""

    def __init__(self, cfg: Any, out: str | Path, *, val_fraction: float, **kwargs: Any) -> None:
        super().__init__(cfg, out, **kwargs)
        full, test = build_datasets(replace(cfg, seed=DATA_SEED))
        train_idx, val_idx = carve(len(full), val_fraction)  # type: ignore[arg-type]
        self.train_set, self.val_set, self.test_set = Holdout(full, train_idx), Holdout(full, val_idx), test
        self.val_fraction = val_fraction

    def _record(self, record: dict[str, Any]) -> None:
        super()._record(record)
        epoch = record["epoch"]
        if epoch == 0 and self.cfg.epochs > 0:
            return
        ref = self.history[0]["val"]
        scores = [relative_improvement(r["val"], ref) for r in self.history if r["epoch"] >= min(1, epoch)]
        score = scores[-1]
        earlier = [s for s in scores[:-1] if not math.isnan(s)]
        if not earlier or (not math.isnan(score) and score > max(earlier)):
            torch.save({"epoch": epoch, "score": score, "model": self.model.state_dict()}, self._best_path())

    def _best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    def run(self) -> dict[str, Any]:
        summary = super().run()
        best = torch.load(self._best_path(), map_location=self.device, weights_only=True)
        self.model.load_state_dict(best["model"])
        selected = next(r for r in self.history if r["epoch"] == best["epoch"])
        test = evaluate_model(
            self.model, self._loader(self.test_set, shuffle=False), self.tasks, self.num_classes, self.device
        )
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
        (self.out / "summary.json").write_text(dumps(summary, indent=2) + "\n")
        return summary


def finished(out: Path) -> dict[str, Any] | None:
    """The summary of a finished bench run in ``out`` (one with test metrics), else None."""
    path = out / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if isinstance(summary, dict) and "bench" in summary else None


def run_job(job: Job, threads: int | None = None) -> dict[str, Any]:
    """Train (or continue) one job and return its summary; a finished job is only read back."""
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(job.out)
    done = finished(out)
    if done is not None:
        return done
    cfg = build_config(job.config)
    resume = is_run_dir(out) and (out / "checkpoints" / "last.pt").is_file()
    if resume:
        (out / "summary.json").unlink(missing_ok=True)
    elif out.exists():
        shutil.rmtree(out)  # interrupted before its first checkpoint: start it again
    trainer = BenchTrainer(cfg, out, val_fraction=job.val_fraction, resume=resume, progress=False, log=lambda _: None)
    return trainer.run()


def _spawn_job(job: Job, threads: int) -> dict[str, Any]:
    return run_job(job, threads)


def run_jobs(jobs: list[Job], n_procs: int = 1, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every job (in ``n_procs`` spawned processes when > 1); summaries by job output path."""
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
    count = len(results)

    def report(job: Job, summary: dict[str, Any], seconds: float) -> None:
        nonlocal count
        count += 1
        score = summary["bench"]["selection_score"]
        log(
            f"[{count}/{total}] {job.kind} {job.name} done in {seconds:.0f}s "
            f"(epoch {summary['bench']['selected_epoch']} selected, val improvement {score:+.2f}%)"
        )

    if n_procs <= 1 or len(todo) <= 1:
        for job in todo:
            t0 = time.perf_counter()
            results[job.out] = run_job(job)
            report(job, results[job.out], time.perf_counter() - t0)
        return results
    threads = max(1, (os.cpu_count() or 1) // n_procs)
    ctx = multiprocessing.get_context("spawn")
    # Baselines and cells are independent runs: all of them go to the pool at once. On an error or
    # Ctrl-C the queued runs are cancelled; finished ones are kept and a rerun continues from there.
    pool = cf.ProcessPoolExecutor(max_workers=n_procs, mp_context=ctx)
    try:
        started = {pool.submit(_spawn_job, job, threads): (job, time.perf_counter()) for job in todo}
        for fut in cf.as_completed(started):
            job, t0 = started[fut]
            results[job.out] = fut.result()
            report(job, results[job.out], time.perf_counter() - t0)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def check_out(out: Path, grid_dict: dict[str, Any]) -> None:
    """``out`` must be new, empty, or a bench of the same data and settings (its ``bench.yaml``)."""
    import yaml

    from densemtl.errors import ConfigError

    marker = out / "bench.yaml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise ConfigError(f"--out {out} holds other files and no bench (no bench.yaml); choose another directory")
    if marker.is_file():
        old = yaml.safe_load(marker.read_text()) or {}
        free = ("device", "workers")  # may change between sessions of one bench
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


def run_bench(grid: Any, out: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) ``grid`` into ``out``: baselines (cached), cells, then the reports."""
    import yaml

    from densemtl.bench.grid import cache_dir
    from densemtl.bench.report import Result, write_reports

    grid_dict = grid.to_dict()
    check_out(out, grid_dict)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.yaml").write_text(yaml.safe_dump(grid_dict, sort_keys=False))
    jobs = grid.jobs_list(out, cache_dir())
    n_base = sum(j.kind == "baseline" for j in jobs)
    cache = Path(jobs[0].out).parent if n_base else "-"
    log(
        f"densemtl bench: {len(jobs) - n_base} cells ({len(grid.archs)} archs × {len(grid.methods)} methods × "
        f"{grid.seeds} seeds) and {n_base} single-task baseline runs (cache {cache})"
        f" into {out}, {grid.jobs} process(es)"
    )
    summaries = run_jobs(jobs, grid.jobs, log)

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
