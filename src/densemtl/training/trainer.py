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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from densemtl.engine import Engine
from densemtl.errors import ConfigError
from densemtl.models import count_parameters
from densemtl.report.console import metrics_header, metrics_row
from densemtl.report.jsonio import dumps
from densemtl.report.plots import plot_run
from densemtl.report.visualize import prediction_grid, save_panel
from densemtl.training.builders import (
    build_datasets,
    build_method,
    build_model,
    build_optimizer,
    resolve_device,
)
from densemtl.training.checkpoint import load_checkpoint, save_checkpoint
from densemtl.training.config import TrainConfig, build_config, load_yaml, save_yaml
from densemtl.training.evaluation import evaluate_model, move


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
        self.device = resolve_device(cfg.device)
        self.train_set, self.val_set = build_datasets(cfg)
        self.tasks: tuple[str, ...] = tuple(self.train_set.tasks)  # type: ignore[attr-defined]
        self.num_classes: int = int(self.train_set.num_classes)  # type: ignore[attr-defined]
        self.model = build_model(cfg, self.tasks, self.num_classes).to(self.device)
        self.method = build_method(cfg, len(self.tasks))
        self.engine = Engine(
            self.model, self.method, self.tasks, mode=cfg.grad_mode, recompute_every=cfg.recompute_every
        )
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model, self.method)
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
        gen = self.method.generator
        return {
            "config": self.cfg.to_dict(),
            "tasks": list(self.tasks),
            "num_classes": self.num_classes,
            "size": list(getattr(self.train_set, "size", ())),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "method_generator": gen.get_state() if gen is not None else None,
            "engine_step": self.engine.step_count,
            "engine_coefficients": self.engine.coefficients,
        }

    def _restore(self) -> None:
        state = load_checkpoint(self.out / "checkpoints" / "last.pt")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        if state.get("method_generator") is not None and self.method.generator is not None:
            self.method.generator.set_state(state["method_generator"])
        self.engine.step_count = int(state.get("engine_step", 0))
        self.engine.coefficients = state.get("engine_coefficients")
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
        self.log(metrics_row(record["epoch"], record["val"], self.tasks))

    def validate(self) -> dict[str, dict[str, float]]:
        loader = self._loader(self.val_set, shuffle=False)
        return evaluate_model(
            self.model,
            loader,
            self.tasks,
            self.num_classes,
            self.device,
            progress=self.progress,
            desc="validate",
        )

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        loader = self._loader(self.train_set, shuffle=True, epoch=epoch)
        sums = torch.zeros(len(self.tasks), dtype=torch.float64)
        wsums = torch.zeros(len(self.tasks), dtype=torch.float64)
        n = 0
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
            result = self.engine.step(batch)
            self.optimizer.step()
            sums += result.losses.double().cpu()
            wsums += result.weights.double().cpu()
            n += 1
            bar.set_postfix({t: f"{v:.3f}" for t, v in zip(self.tasks, (sums / n).tolist(), strict=True)})
        self.scheduler.step()
        mean = (sums / max(n, 1)).float()
        self.method.end_epoch(epoch, mean)
        return {
            "train_loss": dict(zip(self.tasks, mean.tolist(), strict=True)),
            "weights": dict(zip(self.tasks, (wsums / max(n, 1)).tolist(), strict=True)),
        }

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.epochs`` and return the summary (also written to summary.json)."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)
        save_yaml(self.cfg, self.out / "config.yaml")
        started = time.perf_counter()
        if not self.history:
            self.log(metrics_header(self.tasks))
            t0 = time.perf_counter()
            self._record(
                {
                    "epoch": 0,
                    "train_loss": None,
                    "weights": None,
                    "val": self.validate(),
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
            self._record(
                {"epoch": epoch, **train, "val": val, "lr": lr, "time_s": round(time.perf_counter() - t0, 3)}
            )
            save_checkpoint(self.out / "checkpoints" / "last.pt", self.state())
        if self.epoch == 0:
            save_checkpoint(self.out / "checkpoints" / "last.pt", self.state())
        summary = self.summary(time.perf_counter() - started)
        (self.out / "summary.json").write_text(dumps(summary, indent=2) + "\n")
        plot_run(self.history, self.tasks, self.out / "plots")
        grid = prediction_grid(self.model, self.val_set, self.num_classes)
        save_panel(grid, self.out / "plots" / "predictions.png")
        return summary

    def summary(self, elapsed: float) -> dict[str, Any]:
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
        return {
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


def resume_config(out: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of the run in ``out``, with the few keys that may change when resuming."""
    import dataclasses

    allowed = {"epochs", "device", "workers"}
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
