"""One job of a bench: a Trainer run on a carved split, its selected checkpoint evaluated on test.

What every executor runs on each job (:func:`run_job`), in the bench process or in a worker: the
dataset's ``train`` split (built with data seed 0, whatever the training seed) is split once,
deterministically, into a training part and a carved validation part (``val_fraction`` of it;
the same indices for every cell); the selected checkpoint is the epoch >= 1 whose carved
validation metrics improve most on epoch 0's; only it is evaluated on the dataset's own ``val``
split, which a bench uses as its test split and never selects on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from densemtl.bench.grid import DATA_SEED, Job
from densemtl.bench.locks import RESUME_HINT, run_lock
from densemtl.bench.rundir import clear, finished, remove_if_empty, resumable
from densemtl.data import MultiTaskDataset
from densemtl.errors import DenseMTLError, RuntimeFault
from densemtl.paths import existing_ancestor
from densemtl.plugins import load_pending
from densemtl.report.jsonio import dumps
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
    load_pending()  # in a worker: its parent's plugins ($DENSEMTL_IMPORTS) and the entry points
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
