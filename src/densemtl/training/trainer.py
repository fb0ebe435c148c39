"""The training loop and the run directory it writes.

RUN/config.yaml (resolved config), RUN/metrics.jsonl (a line per epoch, epoch 0 = before
training), RUN/summary.json (final and best metrics), RUN/checkpoints/last.pt, RUN/plots/*.png.
A run resumes exactly: the data order comes from a generator seeded by (seed, epoch), and the
model, optimizer, schedule, method state and method generator are all checkpointed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from densemtl.engine import StepResult
from densemtl.errors import ConfigError
from densemtl.models import count_parameters
from densemtl.report.console import metrics_header, metrics_row
from densemtl.report.diagnostic_plots import plot_diagnostics
from densemtl.report.jsonio import dumps
from densemtl.report.plots import plot_run
from densemtl.report.visualize import prediction_grid, save_panel
from densemtl.training.builders import (
    build_datasets,
    resolve_device,
)
from densemtl.training.checkpoint import load_checkpoint, save_checkpoint
from densemtl.training.config import TrainConfig, build_config, load_yaml, save_yaml
from densemtl.training.diagnostics import Diagnostics, TensorBoardLog, require_tensorboard
from densemtl.training.evaluation import evaluate_model, move
from densemtl.training.ensemble import Ensemble
from densemtl.training.member import Member
from densemtl.training.mimicry import mimicry_losses


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").exists() or (path / "metrics.jsonl").exists()


class Trainer:
    """Trains ``cfg`` into the run directory ``out``; ``resume=True`` continues a run there."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: str | Path,
        *,
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
        self.tasks: tuple[str, ...] = tuple(self.train_set.tasks)  # type: ignore[attr-defined]
        self.num_classes: int = int(self.train_set.num_classes)  # type: ignore[attr-defined]
        self.main = Member(cfg, self.tasks, self.num_classes, self.device)
        self.peer: Member | None = None
        if cfg.peer_arch:
            self.peer = Member(
                cfg,
                self.tasks,
                self.num_classes,
                self.device,
                arch=cfg.peer_arch,
                arch_args=cfg.peer_args,
                seed_offset=1,
            )
        self.model, self.method, self.engine = self.main.model, self.main.method, self.main.engine
        self.optimizer, self.scheduler = self.main.optimizer, self.main.scheduler
        self.diagnostics = Diagnostics(
            self.model,
            self.tasks,
            lambda model, batch: self.engine.task_loss_parts(model(batch["image"]), batch),
            self.model.named_shared_parameters(),
            every=cfg.diagnostics_every,
        )
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._restore()

    # -- data -------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, *, shuffle: bool, epoch: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        if hasattr(dataset, "epoch"):
            dataset.epoch = epoch  # type: ignore[attr-defined]
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            shuffle=shuffle,
            generator=gen if shuffle else None,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
        )

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "size": list(getattr(self.train_set, "size", ())),
            "epoch": self.epoch,
            **self.main.state(),
            "peer": self.peer.state() if self.peer is not None else None,
        }

    def _restore(self) -> None:
        state = load_checkpoint(self.out / "checkpoints" / "last.pt")
        self.main.restore(state)
        if self.peer is not None:
            self.peer.restore(state["peer"])
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
        """Validation metrics under "val" (main network), plus "peer_val" and "ensemble_val" in MDML."""
        loader = self._loader(self.val_set, shuffle=False)
        nets: list[tuple[str, nn.Module]] = [("val", self.model)]
        if self.peer is not None:
            nets += [("peer_val", self.peer.model), ("ensemble_val", Ensemble(self.model, self.peer.model))]
        return {
            key: evaluate_model(
                net, loader, self.tasks, self.num_classes, self.device, progress=self.progress, desc="validate"
            )
            for key, net in nets
        }

    def mimicry_weight(self, epoch: int) -> float:
        """MDML's alpha, ramped linearly from 0 over ``alpha_warmup_epochs`` epochs."""
        warm = self.cfg.alpha_warmup_epochs
        return self.cfg.mimicry_weight * (min(1.0, (epoch - 1) / warm) if warm > 0 else 1.0)

    def _mutual_step(self, batch: dict[str, Tensor], alpha: float) -> tuple[StepResult, StepResult]:
        """Both networks forward, each backward with its supervised + alpha * mimicry losses."""
        assert self.peer is not None
        tau = self.cfg.mimicry_temperature
        self.peer.optimizer.zero_grad(set_to_none=True)
        fa, fb = self.main.engine.forward(batch), self.peer.engine.forward(batch)
        ma = [alpha * m for m in mimicry_losses(fa.preds, fb.preds, batch, self.tasks, tau)]
        mb = [alpha * m for m in mimicry_losses(fb.preds, fa.preds, batch, self.tasks, tau)]
        ra = self.main.engine.backward(fa, ma)
        rb = self.peer.engine.backward(fb, mb)
        self.peer.optimizer.step()
        return ra, rb

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        members = [self.main] + ([self.peer] if self.peer is not None else [])
        for m in members:
            m.model.train()
        loader = self._loader(self.train_set, shuffle=True, epoch=epoch)
        T = len(self.tasks)
        sums = torch.zeros(len(members), 2, T, dtype=torch.float64)  # (member, losses/weights, task)
        n = 0
        alpha = self.mimicry_weight(epoch)
        self.diagnostics.reset()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            leave=False,
            disable=None if self.progress else True,
            dynamic_ncols=True,
        )
        for batch in bar:
            batch = move(batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            results = self._mutual_step(batch, alpha) if self.peer is not None else (self.engine.step(batch),)
            self.diagnostics.observe(batch, self.engine.step_count - 1)  # same weights as the step, before the update
            self.optimizer.step()
            for i, r in enumerate(results):
                sums[i, 0] += r.losses.double().cpu()
                sums[i, 1] += r.weights.double().cpu()
            n += 1
            bar.set_postfix({t: f"{v:.3f}" for t, v in zip(self.tasks, (sums[0, 0] / n).tolist(), strict=True)})
        means = sums / max(n, 1)
        record: dict[str, Any] = {}
        for i, m in enumerate(members):
            m.scheduler.step()
            m.method.end_epoch(epoch, means[i, 0].float())
            prefix = "" if i == 0 else "peer_"
            record[prefix + "train_loss"] = dict(zip(self.tasks, means[i, 0].tolist(), strict=True))
            record[prefix + "weights"] = dict(zip(self.tasks, means[i, 1].tolist(), strict=True))
        if self.peer is not None:
            record["mimicry_weight"] = alpha
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
        if not self.history:
            self.log(metrics_header(self.tasks))
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
        else:
            self.log(metrics_header(self.tasks))
        for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
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
        """Final, initial and best metrics (and in MDML the peer's and the ensemble's)."""
        from densemtl.metrics import LOWER_IS_BETTER

        best: dict[str, dict[str, dict[str, float]]] = {}
        for rec in self.history:
            for task, ms in rec["val"].items():
                for name, value in ms.items():
                    if value is None or value != value:  # no valid pixel: nothing to rank
                        continue
                    lower = LOWER_IS_BETTER[task][name]
                    cur = best.setdefault(task, {}).get(name)
                    if cur is None or (value < cur["value"] if lower else value > cur["value"]):
                        best[task][name] = {"value": value, "epoch": rec["epoch"]}
        out = {
            "metrics": self.history[-1]["val"],
            "initial_metrics": self.history[0]["val"],
            "best": best,
            "epochs": self.epoch,
            "dataset": self.cfg.dataset,
            "arch": self.cfg.arch,
            "method": self.cfg.method,
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "parameters": count_parameters(self.model),
            "time_s": round(elapsed, 2),
        }
        if self.peer is not None:
            out["peer_arch"] = self.cfg.peer_arch
            out["peer_metrics"] = self.history[-1]["peer_val"]
            out["ensemble_metrics"] = self.history[-1]["ensemble_val"]
            out["peer_parameters"] = count_parameters(self.peer.model)
        return out


def resume_config(out: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of the run in ``out``, with the few keys that may change when resuming."""
    import dataclasses

    allowed = {"epochs", "device", "workers", "diagnostics_every", "tensorboard"}
    path = out / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml)")
    base = build_config(load_yaml(path))
    given = build_config({**base.to_dict(), **overrides})
    for f in dataclasses.fields(TrainConfig):
        if f.name not in allowed and getattr(given, f.name) != getattr(base, f.name):
            raise ConfigError(
                f"cannot change {f.name!r} when resuming {out}; only {', '.join(sorted(allowed))} may change"
            )
    return given
