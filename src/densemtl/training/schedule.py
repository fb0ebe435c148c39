"""The optimizer and learning-rate schedule a config names, and what resuming does to the schedule.

Every schedule is a factor on the base learning rate, taken once per epoch (the trainer steps the
scheduler at each epoch end; epoch ``e`` trains at ``lr * factor(e)``):

- ``step`` (the default): ``lr_gamma ** (e // lr_step)``; ``lr_step`` defaults to 2/3 of
  ``--epochs`` (the synthetic demo preset: 10, 2/3 of its 15), so the rate halves once, two thirds
  of the way through. Without warm-up this is ``torch.optim.lr_scheduler.StepLR``, bit for bit
  what runs before 0.4 did (their checkpoints resume).
- ``cosine``: ``(1 + cos(pi * e / T)) / 2``, ``CosineAnnealingLR(T_max=T)`` to zero.
- ``poly``: ``(1 - e / T) ** 0.9``, the DeepLab schedule, taken per epoch (DeepLab takes it per
  iteration; at tens of iterations per epoch the two differ little).
- ``none``: constant.

``T`` is ``schedule_epochs``, the number of epochs the schedule is planned for (``--epochs`` when
the run starts); past it cosine and poly stay at zero. ``--warmup-epochs W`` multiplies the factor
by ``(e + 1) / (W + 1)`` during the first W epochs (a linear ramp up to the full rate at epoch W).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: The values of ``--optimizer``.
OPTIMIZERS = ("adam", "adamw", "sgd")
#: The values of ``--lr-schedule``.
LR_SCHEDULES = ("step", "cosine", "poly", "none")
#: The exponent of the poly schedule (DeepLab's).
POLY_POWER = 0.9
#: The step size of a step schedule that never decays (``lr_step`` null, runs before 0.4 that had no
#: ``--lr-step``: a constant learning rate).
NO_DECAY = 2**31 - 1


def default_lr_step(epochs: int) -> int:
    """The default ``lr_step``: two thirds of ``epochs`` (at least 1), so the rate decays once."""
    return max(1, (2 * epochs) // 3)


def uses_horizon(cfg: Any) -> bool:
    """Whether the schedule depends on ``schedule_epochs`` (cosine, poly) or has a warm-up."""
    return cfg.lr_schedule in ("cosine", "poly") or cfg.warmup_epochs > 0


def lr_factor(cfg: Any) -> Callable[[int], float]:
    """The factor on the base learning rate of epoch ``e`` (0-based) under ``cfg``'s schedule."""
    kind, horizon, warmup = cfg.lr_schedule, cfg.schedule_epochs, cfg.warmup_epochs
    step, gamma = cfg.lr_step or NO_DECAY, cfg.lr_gamma

    def factor(e: int) -> float:
        if kind == "step":
            f = gamma ** (e // step)
        elif kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(e, horizon) / horizon)) if horizon else 1.0
        elif kind == "poly":
            f = (1.0 - min(e, horizon) / horizon) ** POLY_POWER if horizon else 1.0
        else:
            f = 1.0
        if e < warmup:
            f *= (e + 1) / (warmup + 1)
        return f

    return factor


def make_optimizer(cfg: Any, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the parameter ``groups``: Adam (the default), AdamW (decoupled weight
    decay) or SGD with ``cfg.momentum``; each at ``cfg.lr`` with ``cfg.weight_decay``."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: Any, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The epoch scheduler of ``cfg`` on ``opt``: ``StepLR`` for a step schedule without warm-up (the
    one runs before 0.4 had, whose checkpoints hold its state), a ``LambdaLR`` of :func:`lr_factor`
    otherwise."""
    if cfg.lr_schedule == "step" and not cfg.warmup_epochs:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step or NO_DECAY, gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "none" and not cfg.warmup_epochs:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=NO_DECAY, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))


def describe(cfg: Any) -> str:
    """The schedule in words, e.g. "step: x0.5 every 10 epochs"."""
    if cfg.lr_schedule == "step":
        text = f"step: x{cfg.lr_gamma:g} every {cfg.lr_step} epochs" if cfg.lr_step else "constant"
    elif cfg.lr_schedule == "none":
        text = "constant"
    else:
        text = f"{cfg.lr_schedule} to 0 over {cfg.schedule_epochs} epochs"
    if cfg.warmup_epochs:
        text += f", {cfg.warmup_epochs} warm-up epochs"
    return text


def replanned(base: Any, given: Any, lr_step: int | None) -> Any:
    """``given`` (a resumed run's config) with its schedule planned for its own ``epochs`` as a
    fresh run of them plans it: ``schedule_epochs`` = ``epochs``, and ``lr_step`` the one given
    (``--lr-step``, or a preset's: the synthetic demo's 10), else 2/3 of ``epochs``."""
    lr_step = lr_step if lr_step is not None else default_lr_step(given.epochs)
    return dataclasses.replace(given, schedule_epochs=given.epochs, lr_step=lr_step)


def resume_note(base: Any, given: Any, replan: bool) -> str:
    """One line saying what resuming does to the schedule of the run ``base`` resumed as ``given``."""
    if replan:
        return (
            f"densemtl: the learning-rate schedule is re-planned for {given.epochs} epochs: {describe(given)} "
            f"(was {describe(base)})"
        )
    text = f"densemtl: the learning-rate schedule is kept as planned: {describe(given)}"
    if given.epochs != base.epochs:
        if given.lr_schedule in ("cosine", "poly") and given.epochs > given.schedule_epochs:
            text += f"; epochs {given.schedule_epochs}..{given.epochs - 1} train at a rate of 0"
        text += f" (--replan-schedule plans it for {given.epochs} epochs)"
    return text


def schedule_changed(saved: Mapping[str, Any], cfg: Any) -> bool:
    """Whether ``cfg``'s schedule differs from that of the checkpoint's config ``saved`` (a
    re-planned resume): another ``lr_step``, or another ``schedule_epochs`` where it matters."""
    if saved.get("lr_step") != cfg.lr_step:
        return True
    return uses_horizon(cfg) and saved.get("schedule_epochs", saved.get("epochs")) != cfg.schedule_epochs


def apply_plan(sched: torch.optim.lr_scheduler.LRScheduler, cfg: Any) -> None:
    """Put the restored scheduler ``sched`` on ``cfg``'s (re-planned) schedule at its current epoch:
    the rate a run planned so from the start has there, the later decays at ``cfg``'s steps."""
    if not isinstance(sched, torch.optim.lr_scheduler.StepLR | torch.optim.lr_scheduler.LambdaLR):
        return  # one's own scheduler (Trainer(scheduler=...)) is one's own to plan
    factor = lr_factor(cfg)
    epoch = sched.last_epoch
    if isinstance(sched, torch.optim.lr_scheduler.StepLR):
        sched.step_size = cfg.lr_step or NO_DECAY
    lrs = [base * factor(epoch) for base in sched.base_lrs]
    for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    sched._last_lr = lrs  # type: ignore[attr-defined]
