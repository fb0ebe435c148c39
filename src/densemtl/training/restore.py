"""Resuming a run: the trainer's state from its last checkpoint."""

from __future__ import annotations

from typing import Any

from densemtl.errors import ConfigError
from densemtl.training.checkpoint import is_safetensors, load_checkpoint
from densemtl.training.rundir import read_history
from densemtl.training.schedule import apply_plan, schedule_changed

#: What a member's part of a training checkpoint holds (an export holds ``model`` alone).
MEMBER_KEYS = ("model", "optimizer", "scheduler", "method")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:120]


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
    path = trainer.last_path
    if is_safetensors(path):
        raise ConfigError(
            f"--resume: {path} is a weights-only export (safetensors), not a training checkpoint: it holds "
            "no optimizer state to continue from; train a new run (or put the run's own last.pt back)"
        )
    state = load_checkpoint(path)
    main, *others = trainer.members
    for m in others:
        if not isinstance(state.get(m.name), dict):
            raise ConfigError(f"--resume: the checkpoint of {trainer.out} holds no member {m.name!r}")
    for m, part in [(main, state), *((m, state[m.name]) for m in others)]:
        missing = [k for k in MEMBER_KEYS if not isinstance(part.get(k), dict)]
        if missing:
            raise ConfigError(f"--resume: {path} holds no {missing[0]!r} state; it is not a training checkpoint")
        try:
            m.restore(part)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise ConfigError(
                f"--resume: {path} does not fit this run's {m.name} ({type(e).__name__}: {_first_line(e)})"
            ) from None
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
    if rng is not None and not (isinstance(rng, dict) and all(k in rng for k in ("python", "numpy", "torch"))):
        raise ConfigError(f"--resume: {path} holds a damaged 'rng' (the random generators' state)")
    try:
        trainer.guard.load_state_dict(state.get("guard") or {})
        trainer.precision.load_state_dict(state.get("amp_scaler") or {})
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise ConfigError(f"--resume: {path} holds a damaged 'guard' or 'amp_scaler' ({type(e).__name__})") from None
    trainer._rng = rng
    trainer._elapsed = float(state.get("elapsed_s", 0.0))
