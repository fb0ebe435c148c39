"""Resuming a run: the trainer's state from its last checkpoint."""

from __future__ import annotations

from typing import Any

from densemtl.errors import ConfigError
from densemtl.training.checkpoint import load_checkpoint
from densemtl.training.rundir import read_history
from densemtl.training.schedule import apply_plan, schedule_changed


def restore(trainer: Any) -> None:
    """Put ``trainer`` (a :class:`~densemtl.training.trainer.Trainer`) in the state of its run's
    checkpoints/last.pt: every member, the epoch and step, the history, the partial sums, the guard,
    the random generators (set when the run starts), the gradient scaler and the elapsed time. A
    schedule re-planned on resuming (``--replan-schedule``) takes over from the saved one here."""
    if not trainer.last_path.is_file():
        if any(r["epoch"] >= 1 for r in read_history(trainer.out / "metrics.jsonl")):
            raise ConfigError(f"--resume: {trainer.last_path} does not exist; the run cannot be continued")
        trainer.log(f"densemtl: {trainer.out} has no checkpoint yet: starting it from the beginning")
        return
    state = load_checkpoint(trainer.last_path)
    main, *others = trainer.members
    main.restore(state)
    for m in others:
        if not isinstance(state.get(m.name), dict):
            raise ConfigError(f"--resume: the checkpoint of {trainer.out} holds no member {m.name!r}")
        m.restore(state[m.name])
    saved = state.get("config")
    if isinstance(saved, dict) and schedule_changed(saved, trainer.cfg):  # --replan-schedule
        for m in trainer.members:
            apply_plan(m.scheduler, trainer.cfg)
    trainer.epoch, trainer.step = int(state["epoch"]), int(state.get("step", 0))
    if trainer.cfg.epochs < trainer.epoch:
        raise ConfigError(
            f"--epochs {trainer.cfg.epochs} is below the {trainer.epoch} epochs {trainer.out} has done; "
            f"resume with --epochs {trainer.epoch} or more"
        )
    history = state.get("history")
    if history is None:  # a checkpoint from before the history was kept in it
        history = read_history(trainer.out / "metrics.jsonl")
    trainer.history = [r for r in history if r["epoch"] <= trainer.epoch]
    partial = state.get("epoch_partial")
    if trainer.step and partial is not None:
        trainer.totals.load_state_dict(partial)
        trainer.diagnostics.load_state_dict(partial["diagnostics"])
    else:
        trainer.step = 0
    trainer.guard.load_state_dict(state.get("guard") or {})
    trainer._rng = state.get("rng")
    trainer.precision.load_state_dict(state.get("amp_scaler") or {})
    trainer._elapsed = float(state.get("elapsed_s", 0.0))
