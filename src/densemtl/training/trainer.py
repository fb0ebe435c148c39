"""The training loop and the run directory it writes.

RUN/config.yaml (resolved config), RUN/metrics.jsonl (a line per epoch, epoch 0 = before
training), RUN/summary.json (final and best metrics), RUN/checkpoints/last.pt (the latest state),
RUN/checkpoints/best.pt (the main network of the epoch >= 1 that improves most on epoch 0 on the
validation metrics), RUN/plots/*.png. Every file is replaced atomically.

A run resumes exactly, from an epoch end or from within an epoch (``--checkpoint-every N``,
SIGINT, SIGTERM): the checkpoint holds every member's model, optimizer, schedule, method state,
method generator and engine state, every global random generator, the epoch and the step within
it, the epoch's partial sums and the history of records. The data order of an epoch comes from a
generator seeded by (seed, epoch), so a resumed epoch skips the batches done by index.
A run that fails before its first checkpoint removes what it wrote, so the same ``--out`` works
again; after that it stays resumable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from densemtl.balancing import BalancingMethod
from densemtl.data import MultiTaskDataset
from densemtl.distributed import Comm
from densemtl.engine import NonFiniteGradientError, StepResult
from densemtl.engine.precision import Precision
from densemtl.models import MultiTaskModel
from densemtl.paths import fresh_run_dir
from densemtl.plugins import config_imports
from densemtl.report.console import metrics_header, metrics_row
from densemtl.report.diagnostic_plots import plot_diagnostics
from densemtl.report.jsonio import dumps
from densemtl.report.plots import plot_run
from densemtl.report.progress import progress
from densemtl.report.visualize import prediction_grid, save_panel
from densemtl.training.builders import build_datasets, build_task_set, resolve_device
from densemtl.training.checkpoint import atomic_write_text, save_checkpoint
from densemtl.training.config import TrainConfig
from densemtl.training.diagnostics import Diagnostics, TensorBoardLog, require_tensorboard
from densemtl.training.epoch import EpochTotals, end_epoch
from densemtl.training.evaluation import evaluate_members, move
from densemtl.training.faults import FiniteGuard
from densemtl.training.loaders import epoch_loader, start_notes
from densemtl.training.member import Member
from densemtl.training.objects import OptimizerArg, SchedulerArg, check_parts, resolve_objects
from densemtl.training.ranks import check_in_sync, check_world, on_main, rank_device, share_buffers
from densemtl.training.restore import restore
from densemtl.training.resumable import plain, rng_state, set_rng_state
from densemtl.training.rundir import best_score, check_out_dir, create_run_files, discard, run_summary
from densemtl.training.schemes import Scheme, scheme_for
from densemtl.training.signals import StopSignals


class Trainer:
    """Trains ``cfg`` into the run directory ``out``; ``resume=True`` continues a run there.

    The run's members (one network, or several under mutual learning) and what a batch does to
    them come from ``scheme`` (default: :func:`~densemtl.training.schemes.scheme_for` ``cfg``).
    The loop below is the same for every scheme: per batch, zero every member's gradients, let
    the scheme leave each member's update in ``.grad``, check it is finite, sample the
    diagnostics of the main member, then step each member's optimizer and its engine's
    ``after_step``.
    """

    def __init__(
        self,
        cfg: TrainConfig | None = None,
        out: str | Path | None = None,
        *,
        model: MultiTaskModel | None = None,
        train_data: MultiTaskDataset | None = None,
        val_data: MultiTaskDataset | None = None,
        method: str | BalancingMethod | None = None,
        optimizer: OptimizerArg | None = None,
        scheduler: SchedulerArg | None = None,
        scheme: Scheme | None = None,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = tqdm.write,
        comm: Comm | None = None,
    ) -> None:
        """``cfg`` (default: the demo, ``TrainConfig()``) into ``out`` (default: a fresh folder
        under ./runs); the objects replace what the config names (:mod:`densemtl.training.objects`)."""
        if cfg is not None:  # its plugins first (while a command runs: only what its command line allowed)
            config_imports(cfg.imports)
        cfg, parts, self.objects = resolve_objects(
            cfg if cfg is not None else TrainConfig(), model=model, train_data=train_data, val_data=val_data,
            method=method, optimizer=optimizer, scheduler=scheduler,
        )  # fmt: skip
        self.out = Path(out) if out is not None else fresh_run_dir(cfg)
        #: the processes of the run: rank 0 writes, validates and prints (:mod:`densemtl.training.ranks`)
        self.comm = comm if comm is not None else Comm.current()
        self.main_rank = self.comm.is_main
        self.log = log if self.main_rank else (lambda line: None)
        self.progress = progress and self.main_rank
        check_world(cfg.batch_size, self.comm)
        on_main(self.comm, lambda: check_out_dir(self.out, resume=resume))
        self.resume = resume
        self.cfg = cfg
        if cfg.tensorboard:
            require_tensorboard()
        self.tb: TensorBoardLog | None = None
        self.device = rank_device(resolve_device(cfg.device), self.comm)
        if train_data is not None and val_data is not None:
            self.train_set, self.val_set = train_data, val_data
        else:
            self.train_set, self.val_set = self.build_data(cfg)
        self.task_set = build_task_set(cfg, self.train_set.tasks, self.train_set)  # built once, passed down
        self.tasks: tuple[str, ...] = self.task_set.names
        self.num_classes: int = int(self.train_set.num_classes)
        self.scheme = scheme if scheme is not None else scheme_for(cfg)
        #: --amp: the forward's precision and fp16's gradient scaler, one for every member
        self.precision = Precision(cfg.amp, self.device)
        specs = self.scheme.members()
        check_parts(parts, self.objects, cfg, self.tasks, self.num_classes, len(specs))
        self.members = [
            Member(cfg, self.task_set, self.num_classes, self.device, spec, self.comm, self.precision, parts)
            for spec in specs
        ]
        main = self.members[0]
        self.diagnostics = Diagnostics(
            main.model,
            self.tasks,
            lambda model, batch: main.engine.task_loss_parts(model(batch["image"]), batch),
            main.model.named_shared_parameters(),
            every=cfg.diagnostics_every,
        )
        self.epoch = 0  # epochs done
        self.step = 0  # batches done in epoch ``epoch + 1``
        self.history: list[dict[str, Any]] = []
        self.guard = FiniteGuard(self.tasks, cfg.method)
        self.signals = StopSignals()
        self.totals = EpochTotals(len(self.members), self.tasks)
        self._rng: dict[str, Any] | None = None  # generator states to set when the run starts
        self._elapsed = 0.0  # seconds trained by earlier sessions of the run
        self._started = time.perf_counter()  # when this session's run started
        self.ranks_in_sync = True  # checked at every epoch's end and the run's
        if resume:  # continue from checkpoints/last.pt; the generators are set when the run starts
            self._rng, self._elapsed = restore(self)

    @property
    def model(self) -> MultiTaskModel:
        """The main network (the first member): its metrics are the run's."""
        return self.members[0].model

    @property
    def last_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    # -- data -------------------------------------------------------------------------------------
    def build_data(self, cfg: TrainConfig) -> tuple[MultiTaskDataset, MultiTaskDataset]:
        """The training and validation data of ``cfg`` (a subclass, the bench's, splits them otherwise)."""
        return build_datasets(cfg)

    def loader(self, dataset: MultiTaskDataset, *, shuffle: bool, epoch: int = 0, start: int = 0) -> DataLoader:
        """The batches of ``dataset`` as this run reads them (:func:`~densemtl.training.loaders.epoch_loader`)."""
        return epoch_loader(dataset, self.cfg, self.device, self.comm, shuffle=shuffle, epoch=epoch, start=start)

    # -- state ------------------------------------------------------------------------------------
    def _header(self, epoch: int) -> dict[str, Any]:
        """What a checkpoint says about its run (enough to rebuild the model): config, tasks, sizes."""
        return {
            "config": self.cfg.to_dict(),
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "size": list(self.train_set.size),
            "epoch": epoch,
            **({"objects": dict(self.objects)} if self.objects else {}),
        }

    def state(self) -> dict[str, Any]:
        """The checkpoint: the main member's parts at the top level, every other one's under its
        name; ``epoch`` epochs done and ``step`` batches of the next one."""
        main, *others = self.members
        partial = None
        if self.step:
            partial = {**self.totals.state_dict(), "diagnostics": self.diagnostics.state_dict()}
        return {
            **self._header(self.epoch),
            "step": self.step,
            "epoch_partial": partial,
            "history": plain(self.history),
            "guard": self.guard.state_dict(),
            "rng": rng_state(),
            "amp_scaler": self.precision.state_dict(),
            "elapsed_s": self._elapsed + time.perf_counter() - self._started,
            **main.state(),
            **{m.name: m.state() for m in others},
        }

    def _save(self) -> None:
        if self.main_rank:
            save_checkpoint(self.last_path, self.state())

    def _write_history(self) -> None:
        if self.main_rank:
            atomic_write_text(self.out / "metrics.jsonl", "".join(dumps(r) + "\n" for r in self.history))

    # -- the loop ---------------------------------------------------------------------------------
    def _end_epoch(self, record: dict[str, Any], *, checkpoint: bool = True) -> None:
        """Keep ``record``: best.pt if it is the best epoch, last.pt, then metrics.jsonl (a crash
        between them leaves a checkpoint whose history is the truth on resume)."""
        self.history.append(record)
        if not self.main_rank:
            return
        self._update_best(record)
        if checkpoint:
            self._save()
        self._write_history()
        if self.tb is not None:
            self.tb.log(record)
        self.log(metrics_row(record["epoch"], record["val"], self.task_set))

    def _update_best(self, record: dict[str, Any]) -> None:
        """best.pt: the epoch >= 1 (epoch 0 in a run of no epochs) whose validation metrics
        improve most on epoch 0's (:func:`~densemtl.metrics.relative_improvement`)."""
        epoch = record["epoch"]
        score = best_score(self.history, self.cfg.epochs)
        if score is not None:
            save_checkpoint(self.best_path, {**self._header(epoch), "score": score, "model": self.model.state_dict()})

    def validate(self) -> dict[str, Any]:
        """Validation metrics of every member ("val" for the main network, "peer_val", ...) and,
        with several members, of their ensemble ("ensemble_val")."""
        if not self.main_rank:
            return {}
        loader = self.loader(self.val_set, shuffle=False)
        return evaluate_members(self.members, loader, self.task_set, self.num_classes, self.device, self.progress)

    def train_batch(self, epoch: int, batch: dict[str, Tensor]) -> list[StepResult] | None:
        """One step of every member on ``batch`` (on the run's device, the members in train mode)
        under the scheme: one result per member, or None for a non-finite step that was skipped."""
        for m in self.members:
            m.optimizer.zero_grad(set_to_none=True)
        self.comm.set_batch(len(batch["image"]), self.device)
        if not self.members[0].sync_bn:
            share_buffers(self.comm, self.members)
        try:
            results: list[StepResult] | None = self.scheme.step(self.members, batch)
        except NonFiniteGradientError:
            results = None  # the engine refused the update; the guard names what went wrong
        problem = self.guard.problem(self.members, results, batch, check_grads=self.precision.scaler is None)
        if problem is not None or results is None:
            self._nonfinite_step(epoch, problem or "the update is non-finite")
            return None
        warning = self.guard.divergence(results)
        if warning is not None and self.main_rank:
            print(f"densemtl: warning: epoch {epoch} step {self.step + 1}: {warning}", file=sys.stderr)
        main = self.members[0]
        self.diagnostics.observe(batch, main.engine.step_count - 1)  # same weights as the step, before the update
        for m in self.members:
            self.precision.step(m.optimizer)
        if self.precision.update():
            self.totals.amp_skipped += 1
        for m in self.members:
            m.engine.after_step(batch)
        return results

    def _nonfinite_step(self, epoch: int, problem: str) -> None:
        """Skip the step while ``--skip-nonfinite`` allows (else the guard stops the run)."""
        for m in self.members:
            m.optimizer.zero_grad(set_to_none=True)
        last = self.last_path if self.last_path.is_file() else None
        where = f"epoch {epoch} step {self.step + 1}"
        self.guard.skip_or_stop(where, problem, self.cfg.skip_nonfinite, last, self.resume)
        self.totals.nonfinite += 1

    def _stop_if_signalled(self, *, saved: bool) -> None:
        """After a SIGINT or SIGTERM: write a checkpoint (unless one was just written) and stop."""
        where = f"epoch {self.epoch + 1} step {self.step}" if self.step else f"the end of epoch {self.epoch}"
        self.signals.stop_if_received(self.comm, None if saved else self._save, where, self.out)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (from batch ``self.step`` on, when resuming within it) and return
        its record's training fields."""
        for m in self.members:
            m.model.train()
        start = self.step
        if start == 0:
            self.totals = EpochTotals(len(self.members), self.tasks)
            self.diagnostics.reset()
        loader = self.loader(self.train_set, shuffle=True, epoch=epoch, start=start)
        self.scheme.start_epoch(epoch)
        every = self.cfg.checkpoint_every
        total = start + len(loader)
        bar = progress(  # a bar on a terminal, a line every N seconds off one
            loader,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            prefix="densemtl train",
            initial=start,
            total=total,
            later=(self.cfg.epochs - epoch) * total,
            enabled=self.progress,
        )
        for batch in bar:
            results = self.train_batch(epoch, move(batch, self.device))
            if results is not None:
                self.totals.add(results)
                if self.tb is not None:  # TensorBoard: each step's losses and weights
                    step = self.members[0].engine.step_count
                    self.tb.log_step(step, results, self.tasks, [m.name for m in self.members])
            self.step += 1
            self._stop_if_signalled(saved=False)
            if every and self.step % every == 0 and self.step < total:
                self._save()
            bar.set_postfix({t: f"{v:.3f}" for t, v in self.totals.main_losses().items()})
        record = end_epoch(self.members, self.totals, epoch)
        record.update(self.scheme.record())
        record.update(self.diagnostics.summary())
        if self.cfg.skip_nonfinite:
            record["nonfinite_steps"] = self.totals.nonfinite
        if self.precision.scaler is not None:
            record["amp_skipped_steps"] = self.totals.amp_skipped
        return record

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.epochs`` and return the summary (also written to summary.json).

        SIGINT and SIGTERM stop it after the current step with a checkpoint (:class:`Interrupted`).
        A fresh run that fails before its first checkpoint removes what it wrote.
        """
        fresh = not self.resume
        created = not self.out.exists()
        try:
            with self.signals:
                return self._run()
        except BaseException:
            if fresh and self.main_rank and not self.last_path.is_file():
                discard(self.out, created)
            raise

    def _create_files(self) -> None:
        """The run directory, its config.yaml and the TensorBoard log (rank 0)."""
        self.tb = create_run_files(self.out, self.cfg)
        if self.tb is not None:  # TensorBoard: the prediction grid each epoch, the config as hparams
            grid = lambda: prediction_grid(self.model, self.val_set, self.num_classes, tasks=self.task_set)  # noqa: E731
            self.tb.attach(self.cfg.to_dict(), grid)

    def _run(self) -> dict[str, Any]:
        on_main(self.comm, self._create_files)
        for note in start_notes(self.train_set, self.val_set, self.cfg, self.comm):  # dropped batch, empty tasks
            self.log(note)
        self._started = time.perf_counter()
        self.log(metrics_header(self.task_set))
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None
        if self.history:
            self._write_history()  # from the checkpoint: a torn or emptied metrics.jsonl does not matter
        else:
            t0 = time.perf_counter()
            val = self.validate()
            record = {"epoch": 0, "train_loss": None, "weights": None, **val, "lr": self.cfg.lr}
            self._end_epoch({**record, "time_s": round(time.perf_counter() - t0, 3)}, checkpoint=False)
            self._stop_if_signalled(saved=False)
        for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.members[0].optimizer.param_groups[0]["lr"]
            train = self.train_epoch(epoch)
            val = self.validate()
            self.epoch, self.step = epoch, 0
            self._end_epoch({"epoch": epoch, **train, **val, "lr": lr, "time_s": round(time.perf_counter() - t0, 3)})
            self._stop_if_signalled(saved=True)
            self._check_ranks(f"the end of epoch {epoch}")
        self._check_ranks("the end of the run")
        elapsed = self._elapsed + time.perf_counter() - self._started
        if not self.main_rank:
            return {"time_s": round(elapsed, 2), "world_size": self.comm.world_size, "ranks_in_sync": True}
        if not self.last_path.is_file():
            self._save()
        summary = self.summary(elapsed)
        atomic_write_text(self.out / "summary.json", dumps(summary, indent=2) + "\n")
        plot_run(self.history, self.task_set, self.out / "plots")
        plot_diagnostics(self.history, self.tasks, self.out / "plots")
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        grid = prediction_grid(self.model, self.val_set, self.num_classes, tasks=self.task_set)
        save_panel(grid, self.out / "plots" / "predictions.png")
        return summary

    def summary(self, elapsed: float) -> dict[str, Any]:
        """Final, initial and best metrics (and with several members each peer's and the ensemble's),
        the number of processes and whether their parameters and method states stayed equal."""
        return run_summary(self, elapsed)

    def _check_ranks(self, where: str) -> None:
        """Stop every rank when one's parameters or method state left rank 0's (a bug, never expected)."""
        self.ranks_in_sync = False  # until checked
        check_in_sync(self.comm, self.members, where)
        self.ranks_in_sync = True
