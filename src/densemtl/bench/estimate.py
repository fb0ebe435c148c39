"""How long a bench will take, said before it starts.

Each distinct configuration of the runs still to do (a cell's architecture and method, or a
single-task baseline; seeds share one) is built as its run would be, and one training step is
timed after an untimed one, with the torch threads its worker will have, together with one
evaluation batch and a few samples read (the first time and again). A run is then ``epochs ×
steps`` training steps, ``epochs + 1`` passes over the carved validation split and one over the
test split, its data reads, and :data:`RUN_OVERHEAD_S` for start-up and plots. The bench's wall time is the sum
over the runs shared by the parallel processes (never less than its longest run). Nothing is
written: every configuration is built in a temporary directory, and the global random generators
are left as they were.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from densemtl.bench.grid import Job
from densemtl.bench.job import BenchTrainer
from densemtl.training.config import build_config
from densemtl.training.evaluation import evaluate_model, move
from densemtl.training.resumable import rng_state, set_rng_state

#: Seconds a run spends outside its steps and its data: start-up, checkpoints and the plots at
#: its end (about what a demo-size run took on this project's 2-core machine).
RUN_OVERHEAD_S = 8.0
#: Seconds of timing after which the configurations not yet timed borrow the mean of those timed
#: of their kind (cells, baselines).
BUDGET_S = 20.0


@dataclass(frozen=True)
class Estimate:
    """The expected wall time of a bench's remaining runs on this machine."""

    seconds: float
    runs: int
    procs: int
    timed: int  # configurations whose step was timed (the others borrow their mean)
    configs: int  # distinct configurations among the runs

    def line(self) -> str:
        """What the bench prints before starting."""
        if self.timed == self.configs:
            how = f"each of its {self.configs} configuration(s)"
        else:
            how = f"{self.timed} of its {self.configs} configurations, the others taken as the mean of their kind"
        return (
            f"densemtl bench: estimated {minutes(self.seconds)} for {self.runs} runs on {self.procs} "
            f"job{'s' if self.procs != 1 else ''} (one training step of {how}, timed on this machine)"
        )


def minutes(seconds: float) -> str:
    """``<1 min``, ``~12 min``, ``~3.5 h``."""
    if seconds < 60:
        return "<1 min"
    if seconds < 5400:
        return f"~{math.ceil(seconds / 60)} min"
    return f"~{seconds / 3600:.1f} h"


def _quiet(line: str) -> None:
    """A trainer's log that says nothing: the estimate's steps are not a run."""


def config_key(job: Job) -> str:
    """Jobs that differ only in their seed and directory cost the same: one timing serves them."""
    return json.dumps({k: v for k, v in job.config.items() if k != "seed"}, sort_keys=True, default=str)


def sample_seconds(dataset: Any, k: int = 4) -> tuple[float, float]:
    """Seconds to get one sample of ``dataset`` the first time and again (a dataset that caches,
    like the synthetic scenes, pays the first cost once per run; one read from disk every epoch)."""
    k = max(1, min(k, len(dataset)))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        for i in range(k):
            dataset[i]
        times.append((time.perf_counter() - t0) / k)
    return times[0], times[1]


def time_run(job: Job) -> tuple[float, int]:
    """(seconds, training steps) of one run of ``job`` on this machine, from one timed step."""
    cfg = build_config(job.config)
    with tempfile.TemporaryDirectory(prefix="densemtl-estimate-") as tmp:
        trainer = BenchTrainer(cfg, Path(tmp) / "run", val_fraction=job.val_fraction, progress=False, log=_quiet)
        loader = trainer.loader(trainer.train_set, shuffle=True, epoch=1)
        steps = len(loader)
        val_batches = len(trainer.loader(trainer.val_set, shuffle=False))
        test_batches = len(trainer.loader(trainer.test_set, shuffle=False))
        n_train, n_val, n_test = len(trainer.train_set), len(trainer.val_set), len(trainer.test_set)
        first_s, again_s = sample_seconds(trainer.test_set)
        batches = iter(loader)
        batch = move(next(batches), trainer.device)
        for m in trainer.members:
            m.model.train()
        trainer.train_batch(1, batch)  # untimed: first-call allocations and lazy set-up
        if steps > 1:
            batch = move(next(batches), trainer.device)
        t0 = time.perf_counter()
        trainer.train_batch(1, batch)
        step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for m in trainer.members:
            evaluate_model(m.model, [batch], trainer.task_set, trainer.num_classes, trainer.device)
        eval_s = time.perf_counter() - t0
    epochs = cfg.epochs
    seconds = epochs * steps * step_s + ((epochs + 1) * val_batches + test_batches) * eval_s
    reads, fresh = epochs * n_train + (epochs + 1) * n_val + n_test, n_train + n_val + n_test
    seconds += fresh * first_s + max(0, reads - fresh) * again_s + RUN_OVERHEAD_S
    return seconds, epochs * steps


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def estimate_bench(
    jobs: Sequence[Job], procs: int, threads: int | None = None, budget_s: float = BUDGET_S
) -> Estimate | None:
    """The expected wall time of ``jobs`` on ``procs`` local processes of ``threads`` torch threads
    each (default: the cores shared between them, as the bench gives its workers); None when no
    configuration could be timed (the runs will say why)."""
    procs = max(1, min(procs, len(jobs)))
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // procs) if procs > 1 else torch.get_num_threads()
    before_threads, before_rng = torch.get_num_threads(), rng_state()
    per_key: dict[str, float] = {}
    failed: set[str] = set()
    kinds = {config_key(job): job.kind for job in jobs}
    # one cell and one baseline first, whatever the budget: one not timed borrows the mean of its kind
    firsts = [next((j for j in jobs if j.kind == kind), None) for kind in ("cell", "baseline")]
    order = [j for j in firsts if j is not None] + list(jobs)
    started = time.perf_counter()
    try:
        torch.set_num_threads(threads)
        for job in order:
            key = config_key(job)
            over = time.perf_counter() - started > budget_s and not any(job is f for f in firsts)
            if key in per_key or key in failed or over:
                continue
            try:
                per_key[key] = time_run(job)[0]
            except Exception:  # noqa: BLE001 - the run itself will say what is wrong, in its own words
                failed.add(key)
    finally:
        torch.set_num_threads(before_threads)
        set_rng_state(before_rng)
    if not per_key:
        return None
    mean = {kind: _mean([t for k, t in per_key.items() if kinds[k] == kind]) for kind in ("cell", "baseline")}
    overall = _mean(list(per_key.values()))
    runs = [per_key.get(config_key(job), mean.get(job.kind) or overall) for job in jobs]
    seconds = max(sum(runs) / procs, max(runs, default=0.0))
    return Estimate(seconds, len(jobs), procs, len(per_key), len({config_key(job) for job in jobs}))
