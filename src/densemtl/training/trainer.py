"""The training loop and the run directory it writes.

RUN/config.yaml (resolved config), RUN/metrics.jsonl (a line per epoch, epoch 0 = before
training), RUN/summary.json (final and best metrics), RUN/checkpoints/last.pt, RUN/plots/*.png.
A run resumes exactly: the data order comes from a generator seeded by (seed, epoch), and every
member's model, optimizer, schedule, method state, method generator and engine state are
checkpointed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from densemtl.data import MultiTaskDataset
from densemtl.engine import StepResult
from densemtl.errors import ConfigError
from densemtl.models import MultiTaskModel, count_parameters
from densemtl.report.console import metrics_header, metrics_row
from densemtl.report.diagnostic_plots import plot_diagnostics
from densemtl.report.jsonio import dumps
from densemtl.report.plots import plot_run
from densemtl.report.visualize import prediction_grid, save_panel
from densemtl.training.builders import build_datasets, resolve_device
from densemtl.training.checkpoint import load_checkpoint, save_checkpoint
from densemtl.training.config import TrainConfig, save_yaml
from densemtl.training.diagnostics import Diagnostics, TensorBoardLog, require_tensorboard
from densemtl.training.ensemble import Ensemble
from densemtl.training.evaluation import evaluate_model, move
from densemtl.training.member import Member
from densemtl.training.schemes import Scheme, scheme_for


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").exists() or (path / "metrics.jsonl").exists()


class Trainer:
    """Trains ``cfg`` into the run directory ``out``; ``resume=True`` continues a run there.

    The run's members (one network, or several under mutual learning) and what a batch does to
    them come from ``scheme`` (default: :func:`~densemtl.training.schemes.scheme_for` ``cfg``).
    The loop below is the same for every scheme: per batch, zero every member's gradients, let
    the scheme leave each member's update in ``.grad``, sample the diagnostics of the main
    member, then step each member's optimizer and its engine's ``after_step``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | Path,
        *,
        scheme: Scheme | None = None,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = tqdm.write,
    ) -> None:
        self.out = Path(out)
        self.log = log
        self.progress = progress
        if resume:
            if not is_run_dir(self.out):
                raise ConfigError(f"--resume: {self.out} holds no run to resume")
        elif self.out.exists() and (is_run_dir(self.out) or any(self.out.iterdir())):
            raise ConfigError(
                f"--out {self.out} already holds a run or other files; use --resume to continue it "
                "or choose another directory (runs are never overwritten)"
            )
        self.cfg = cfg
        if cfg.tensorboard:
            require_tensorboard()
        self.tb: TensorBoardLog | None = None
        self.device = resolve_device(cfg.device)
        self.train_set, self.val_set = build_datasets(cfg)
        self.tasks: tuple[str, ...] = tuple(self.train_set.tasks)
        self.num_classes: int = int(self.train_set.num_classes)
        self.scheme = scheme if scheme is not None else scheme_for(cfg)
        self.members = [
            Member(cfg, self.tasks, self.num_classes, self.device, spec) for spec in self.scheme.members()
        ]
        main = self.members[0]
        self.diagnostics = Diagnostics(
            main.model,
            self.tasks,
            lambda model, batch: main.engine.task_loss_parts(model(batch["image"]), batch),
            main.model.named_shared_parameters(),
            every=cfg.diagnostics_every,
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._restore()

    @property
    def model(self) -> MultiTaskModel:
        """The main network (the first member): its metrics are the run's."""
        return self.members[0].model

    # -- data -------------------------------------------------------------------------------------
    def _loader(self, dataset: MultiTaskDataset, *, shuffle: bool, epoch: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        dataset.set_epoch(epoch)
        return DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            generator=gen if shuffle else None,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint: the main member's parts at the top level, every other one's under its name."""
        main, *others = self.members
        return {
            "config": self.cfg.to_dict(),
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "size": list(self.train_set.size),
            "epoch": self.epoch,
            **main.state(),
            **{m.name: m.state() for m in others},
        }

    def _restore(self) -> None:
        state = load_checkpoint(self.out / "checkpoints" / "last.pt")
        main, *others = self.members
        main.restore(state)
        for m in others:
            if not isinstance(state.get(m.name), dict):
                raise ConfigError(f"--resume: the checkpoint of {self.out} holds no member {m.name!r}")
            m.restore(state[m.name])
        self.epoch = int(state["epoch"])
        lines = (self.out / "metrics.jsonl").read_text().splitlines()
        self.history = [r for r in (json.loads(x) for x in lines if x.strip()) if r["epoch"] <= self.epoch]
        self._rewrite_history()

    def _rewrite_history(self) -> None:
        text = "".join(dumps(r) + "\n" for r in self.history)
        (self.out / "metrics.jsonl").write_text(text)

    # -- the loop ---------------------------------------------------------------------------------
    def _record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(dumps(record) + "\n")
        if self.tb is not None:
            self.tb.log(record)
        self.log(metrics_row(record["epoch"], record["val"], self.tasks))

    def validate(self) -> dict[str, Any]:
        """Validation metrics of every member ("val" for the main network, "peer_val", ...) and,
        with several members, of their ensemble ("ensemble_val")."""
        loader = self._loader(self.val_set, shuffle=False)
        nets: list[tuple[str, nn.Module]] = [(m.key("val"), m.model) for m in self.members]
        if len(self.members) > 1:
            nets.append(("ensemble_val", Ensemble(*(m.model for m in self.members))))
        return {
            key: evaluate_model(
                net, loader, self.tasks, self.num_classes, self.device, progress=self.progress, desc="validate"
            )
            for key, net in nets
        }

    def _train_batch(self, batch: dict[str, Tensor]) -> list[StepResult]:
        """One step of every member on ``batch`` under the scheme; one result per member."""
        for m in self.members:
            m.optimizer.zero_grad(set_to_none=True)
        results = self.scheme.step(self.members, batch)
        main = self.members[0]
        self.diagnostics.observe(batch, main.engine.step_count - 1)  # same weights as the step, before the update
        for m in self.members:
            m.optimizer.step()
            m.engine.after_step(batch)
        return results

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        for m in self.members:
            m.model.train()
        loader = self._loader(self.train_set, shuffle=True, epoch=epoch)
        sums = torch.zeros(len(self.members), 2, len(self.tasks), dtype=torch.float64)  # (member, loss/weight, task)
        n = 0
        self.scheme.start_epoch(epoch)
        self.diagnostics.reset()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            leave=False,
            disable=None if self.progress else True,
            dynamic_ncols=True,
        )
        for batch in bar:
            for i, r in enumerate(self._train_batch(move(batch, self.device))):
                sums[i, 0] += r.losses.double().cpu()
                sums[i, 1] += r.weights.double().cpu()
            n += 1
            bar.set_postfix({t: f"{v:.3f}" for t, v in zip(self.tasks, (sums[0, 0] / n).tolist(), strict=True)})
        means = sums / max(n, 1)
        record: dict[str, Any] = {}
        for i, m in enumerate(self.members):
            m.scheduler.step()
            m.method.end_epoch(epoch, means[i, 0].float())
            record[m.key("train_loss")] = dict(zip(self.tasks, means[i, 0].tolist(), strict=True))
            record[m.key("weights")] = dict(zip(self.tasks, means[i, 1].tolist(), strict=True))
        record.update(self.scheme.record())
        record.update(self.diagnostics.summary())
        return record

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.epochs`` and return the summary (also written to summary.json)."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        save_yaml(self.cfg, self.out / "config.yaml")
        if self.cfg.tensorboard:
            self.tb = TensorBoardLog(self.out / "tensorboard")
        started = time.perf_counter()
        self.log(metrics_header(self.tasks))
        if not self.history:
            t0 = time.perf_counter()
            self._record(
                {
                    "epoch": 0,
                    "train_loss": None,
                    "weights": None,
                    **self.validate(),
                    "lr": self.cfg.lr,
                    "time_s": round(time.perf_counter() - t0, 3),
                }
            )
        for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.members[0].optimizer.param_groups[0]["lr"]
            train = self.train_epoch(epoch)
            val = self.validate()
            self.epoch = epoch
            self._record({"epoch": epoch, **train, **val, "lr": lr, "time_s": round(time.perf_counter() - t0, 3)})
            save_checkpoint(self.out / "checkpoints" / "last.pt", self.state())
        if self.epoch == 0:
            save_checkpoint(self.out / "checkpoints" / "last.pt", self.state())
        summary = self.summary(time.perf_counter() - started)
        (self.out / "summary.json").write_text(dumps(summary, indent=2) + "\n")
        plot_run(self.history, self.tasks, self.out / "plots")
        plot_diagnostics(self.history, self.tasks, self.out / "plots")
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        grid = prediction_grid(self.model, self.val_set, self.num_classes)
        save_panel(grid, self.out / "plots" / "predictions.png")
        return summary

    def summary(self, elapsed: float) -> dict[str, Any]:
        """Final, initial and best metrics (and with several members each peer's and the ensemble's)."""
        from densemtl.metrics import lower_is_better

        best: dict[str, dict[str, dict[str, float]]] = {}
        for rec in self.history:
            for task, ms in rec["val"].items():
                for name, value in ms.items():
                    lower = lower_is_better(task, name)
                    if lower is None or value is None or value != value:  # no direction or no valid pixel
                        continue
                    cur = best.setdefault(task, {}).get(name)
                    if cur is None or (value < cur["value"] if lower else value > cur["value"]):
                        best[task][name] = {"value": value, "epoch": rec["epoch"]}
        main, *peers = self.members
        out: dict[str, Any] = {
            "metrics": self.history[-1]["val"],
            "initial_metrics": self.history[0]["val"],
            "best": best,
            "epochs": self.epoch,
            "dataset": self.cfg.dataset,
            "arch": self.cfg.arch,
            "method": self.cfg.method,
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "parameters": count_parameters(main.model),
            "time_s": round(elapsed, 2),
        }
        for m in peers:
            out[m.key("arch")] = m.arch
            out[m.key("metrics")] = self.history[-1][m.key("val")]
        if peers:
            out["ensemble_metrics"] = self.history[-1]["ensemble_val"]
        for m in peers:
            out[m.key("parameters")] = count_parameters(m.model)
            out[m.key("arch_args")] = m.arch_args
        return out
