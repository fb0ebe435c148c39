"""Resuming a run: the trainer's state from its last checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from densemtl.errors import ConfigError
from densemtl.training.checkpoint import is_safetensors, load_checkpoint
from densemtl.training.config import REPLANNED, RESUMABLE, TrainConfig, build_config
from densemtl.training.model_check import check_finite
from densemtl.training.resume_checks import (
    check_elapsed,
    check_like,
    check_optimizer,
    check_rng,
    check_scheduler,
    damaged,
    load_part,
)
from densemtl.training.rundir import read_history
from densemtl.training.schedule import apply_plan, schedule_changed

#: What a member's part of a training checkpoint holds (an export holds ``model`` alone).
MEMBER_KEYS = ("model", "optimizer", "scheduler", "method")


def restore(trainer: Any) -> tuple[dict[str, Any] | None, float]:
    """Put ``trainer`` (a :class:`~densemtl.training.trainer.Trainer`) in the state of its run's
    checkpoints/last.pt: every member, the epoch and step, the history, the partial sums, the guard
    and the gradient scaler. A schedule re-planned on resuming (``--replan-schedule``) takes over
    from the saved one here. Returns what the trainer keeps for itself: the random generators'
    state (checked; the trainer sets it when the run starts; None when there is nothing to resume
    or the checkpoint holds none) and the seconds trained by the run's earlier sessions."""
    if not trainer.last_path.is_file():
        if any(r["epoch"] >= 1 for r in read_history(trainer.out / "metrics.jsonl")):
            raise ConfigError(f"--resume: {trainer.last_path} does not exist; the run cannot be continued")
        trainer.log(f"densemtl: {trainer.out} has no checkpoint yet: starting it from the beginning")
        return None, 0.0
    path = trainer.last_path
    for name in ("metrics.jsonl", "summary.json"):  # found at the end of a resumed run otherwise
        if (trainer.out / name).is_dir():
            raise ConfigError(
                f"--resume: {trainer.out / name} is a folder where the run writes its {name}; move it away and resume"
            )
    if is_safetensors(path):
        raise ConfigError(
            f"--resume: {path} is a weights-only export (safetensors), not a training checkpoint: it holds "
            "no optimizer state to continue from; train a new run (or put the run's own last.pt back)"
        )
    state = load_checkpoint(path)
    _check_config(state.get("config"), trainer.cfg, path)
    main, *others = trainer.members
    for m in others:
        if not isinstance(state.get(m.name), dict):
            raise ConfigError(f"--resume: the checkpoint of {trainer.out} holds no member {m.name!r}")
    for m, part in [(main, state), *((m, state[m.name]) for m in others)]:
        missing = [k for k in MEMBER_KEYS if not isinstance(part.get(k), dict)]
        if missing:
            raise ConfigError(f"--resume: {path} holds no {missing[0]!r} state; it is not a training checkpoint")
        _restore_member(m, part, path, f"{m.name}." if m.name else "")
    saved = state.get("config")
    if isinstance(saved, dict) and schedule_changed(saved, trainer.cfg):  # --replan-schedule
        for m in trainer.members:
            apply_plan(m.scheduler, trainer.cfg)
    if "epoch" not in state:
        raise ConfigError(f"--resume: {path} holds no 'epoch'; it is not a training checkpoint")
    trainer.epoch, trainer.step = int(state["epoch"]), int(state.get("step", 0))
    if trainer.cfg.epochs < trainer.epoch:
        raise ConfigError(
            f"--epochs {trainer.cfg.epochs} is below the {trainer.epoch} epochs {trainer.out} has done; "
            f"resume with --epochs {trainer.epoch} or more"
        )
    history = state.get("history")
    if history is None:  # a checkpoint from before the history was kept in it
        history = read_history(trainer.out / "metrics.jsonl")
        done = {r["epoch"] for r in history}
        lost = [e for e in range(trainer.epoch + 1) if e not in done]
        if lost:
            raise ConfigError(
                f"--resume: {path} holds no 'history' and {trainer.out / 'metrics.jsonl'} has no record of "
                f"epoch {lost[0]}; the run's history cannot be continued"
            )
    trainer.history = [r for r in history if r["epoch"] <= trainer.epoch]
    partial = state.get("epoch_partial")
    if trainer.step and partial is not None:
        try:
            trainer.totals.load_state_dict(partial)
            trainer.diagnostics.load_state_dict(partial["diagnostics"])
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise ConfigError(f"--resume: {path} holds a damaged 'epoch_partial' ({type(e).__name__})") from None
    else:
        trainer.step = 0
    rng = state.get("rng")
    if rng is not None:
        check_rng(rng, path)
    guard = state.get("guard") or {}
    check_like(guard, trainer.guard.state_dict(), path, "guard")
    load_part(trainer.guard.load_state_dict, guard, path, "guard")
    load_part(trainer.precision.load_state_dict, state.get("amp_scaler") or {}, path, "amp_scaler")
    return rng, check_elapsed(state.get("elapsed_s", 0.0), path)


def _restore_member(m: Any, part: dict[str, Any], path: Path, prefix: str) -> None:
    """Load one member's part of the checkpoint, each piece checked against the freshly built
    member's first (:mod:`~densemtl.training.resume_checks`) and its load failures named."""
    check_optimizer(part["optimizer"], m.optimizer, path, f"{prefix}optimizer")
    check_scheduler(part["scheduler"], m.scheduler, path, f"{prefix}scheduler")
    check_like(part["method"], m.method.state_dict(), path, f"{prefix}method")
    if isinstance(part.get("engine"), dict):
        check_like(part["engine"], m.engine.state_dict(), path, f"{prefix}engine")
    m.restore(part, lambda field, fn: load_part(lambda _: fn(), None, path, f"{prefix}{field}"))
    check_finite(m.model, path)


def _check_config(saved: object, cfg: TrainConfig, path: Path) -> None:
    """The checkpoint's config must be a valid config agreeing with the run's config.yaml on every
    key a resume may not change (a damaged or swapped last.pt is refused, not trained on)."""
    if not isinstance(saved, dict):
        raise damaged(path, "config", f"a mapping expected, got {type(saved).__name__}")
    try:
        held = build_config(saved)
    except ConfigError as e:
        raise damaged(path, "config", str(e)) from None
    free = {*RESUMABLE, *REPLANNED, "imports"}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in free and getattr(held, f.name) != getattr(cfg, f.name):
            raise ConfigError(
                f"--resume: {path} and the run's config.yaml disagree on {f.name!r} "
                f"({getattr(held, f.name)!r} vs {getattr(cfg, f.name)!r}); put the run's own last.pt back"
            )
