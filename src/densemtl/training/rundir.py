"""The run directory's rules that do not need a trainer: where a run may be written, reading a
damaged history, removing what a failed fresh run wrote, and choosing the best epoch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from densemtl.errors import ConfigError, RuntimeFault
from densemtl.metrics import best_score as best_score  # re-exported: the rule best.pt is chosen by
from densemtl.metrics import lower_is_better
from densemtl.models import count_parameters
from densemtl.paths import RUN_FILES, RUN_FOLDERS, check_not_linked, existing_ancestor


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").exists() or (path / "metrics.jsonl").exists()


def check_out_dir(out: Path, *, resume: bool = False) -> None:
    """``out`` must be a directory, or a path where one can be made, in a writable place; with
    ``resume`` it must hold a run, else it must not (runs are never overwritten)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    place = existing_ancestor(out)
    if not place.is_dir():
        raise ConfigError(f"--out {out}: {place} is a file, not a directory")
    if not os.access(place, os.W_OK | os.X_OK):
        raise RuntimeFault(f"cannot write to {place}: permission denied; choose another --out")
    if out.is_dir():
        check_run_links(out)
    if resume:
        if not is_run_dir(out):
            raise ConfigError(f"--resume: {out} holds no run to resume")
    elif out.exists() and (is_run_dir(out) or any(out.iterdir())) and not killed_at_birth(out):
        raise ConfigError(
            f"--out {out} already holds a run or other files; use --resume to continue it "
            "or choose another directory (runs are never overwritten)"
        )


def check_run_links(out: Path) -> None:
    """No file or folder a run writes in ``out`` (its own files, ``plots/``, ``checkpoints/``,
    ``tensorboard/`` and what is in them) is a symbolic link: a run never makes one, so writing
    would go through a link someone else put there (a one-line refusal naming it, before any work)."""
    for name in (*RUN_FILES, *RUN_FOLDERS):
        entry = out / name
        check_not_linked(entry, f"--out {out}: ")
        if name in RUN_FOLDERS and entry.is_dir():
            for child in sorted(entry.iterdir()):
                check_not_linked(child, f"--out {out}: ")


def killed_at_birth(out: Path) -> bool:
    """Whether ``out`` holds only what a fresh run killed while making its directory leaves (an
    empty ``checkpoints/`` folder, a temp file of its config.yaml): no run, so a new one may take it."""
    if is_run_dir(out):
        return False
    for child in out.iterdir():
        if child.name == "checkpoints" and child.is_dir() and not child.is_symlink():
            if any(child.iterdir()):
                return False
        elif not (child.is_file() and child.name.startswith("config.yaml.") and child.name.endswith(".tmp")):
            return False
    return True


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl that are whole lines of JSON with an ``epoch`` >= 0 and a
    ``val`` mapping (a torn or foreign line is left out)."""
    out: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            epoch = rec.get("epoch") if isinstance(rec, dict) else None
            whole = isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0
            if whole and isinstance(rec.get("val"), dict):
                out.append(rec)  # an epoch record; anything else (a hand-edited line) is left out
    return out


def discard(out: Path, created: bool) -> None:
    """Remove what a fresh run wrote into ``out``: the directory if the run made it, else (it was
    empty before) everything in it."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in list(out.iterdir()) if out.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def best_metrics(history: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """The best value of every validation metric over ``history``, with its epoch."""
    best: dict[str, dict[str, dict[str, float]]] = {}
    for rec in history:
        for task, ms in rec["val"].items():
            for name, value in ms.items():
                lower = lower_is_better(task, name)
                if lower is None or value is None or value != value:  # no direction or no valid pixel
                    continue
                cur = best.setdefault(task, {}).get(name)
                if cur is None or (value < cur["value"] if lower else value > cur["value"]):
                    best[task][name] = {"value": value, "epoch": rec["epoch"]}
    return best


def run_summary(trainer: Any, elapsed: float) -> dict[str, Any]:
    """The summary.json of ``trainer`` (a :class:`~densemtl.training.trainer.Trainer`): final,
    initial and best metrics (and with several members each peer's and the ensemble's)."""
    main, *peers = trainer.members
    out: dict[str, Any] = {
        "metrics": trainer.history[-1]["val"],
        "initial_metrics": trainer.history[0]["val"],
        "best": best_metrics(trainer.history),
        "epochs": trainer.epoch,
        "dataset": trainer.cfg.dataset,
        "arch": trainer.cfg.arch,
        "method": trainer.cfg.method,
        "tasks": list(trainer.tasks),
        "num_classes": trainer.num_classes,
        "parameters": count_parameters(main.model),
        "time_s": round(elapsed, 2),
    }
    for m in peers:
        out[m.key("arch")] = m.arch
        out[m.key("metrics")] = trainer.history[-1][m.key("val")]
    if peers:
        out["ensemble_metrics"] = trainer.history[-1]["ensemble_val"]
    for m in peers:
        out[m.key("parameters")] = count_parameters(m.model)
        out[m.key("arch_args")] = m.arch_args
    if "model" in trainer.objects:  # a model given as an object: its class, not the config's arch
        out.update(objects=trainer.objects, arch=trainer.objects["model"])
    return {**out, "world_size": trainer.comm.world_size, "ranks_in_sync": trainer.ranks_in_sync}


def create_run_files(out: Path, cfg: Any) -> Any:
    """Make the run directory ``out`` with its config.yaml (a :class:`RuntimeFault` naming it when
    it cannot be made); the TensorBoard log when ``cfg.tensorboard``, else None."""
    from densemtl.training.checkpoint import atomic_write_text
    from densemtl.training.diagnostics import TensorBoardLog

    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeFault(f"cannot create the run directory {out}: {e.strerror or e}; choose another --out") from None
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return TensorBoardLog(out / "tensorboard") if cfg.tensorboard else None
