"""Non-finite and diverging training, caught at the step where it happens.

After the scheme's step leaves every member's update in ``.grad`` (and before the optimizer
steps), :meth:`FiniteGuard.problem` looks for a NaN or inf task loss, then for a non-finite
update (the total norm of the gradients). The trainer stops the run on the first one, or skips
the step (no optimizer step, no ``after_step``) while ``--skip-nonfinite N`` allows. Reading the
losses and the gradients changes nothing: a run without a fault is the same with the guard.

Divergence that stays finite (``--lr 1e6`` reaching losses of 1e28) is only warned about, once
per run: a task loss above :data:`DIVERGENCE_FACTOR` times its first step's value.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from densemtl.engine import StepResult
from densemtl.errors import RuntimeFault
from densemtl.training.member import Member

#: a task loss this many times its first step's value (or 1e-3, if larger) is warned about
DIVERGENCE_FACTOR = 1e6


def _who(member: Member) -> str:
    return f" of member {member.name!r}" if member.name else ""


def loss_values(member: Member, batch: dict[str, Tensor]) -> list[float]:
    """The member's task losses on ``batch`` from a forward without gradients, leaving the model's
    buffers (BatchNorm statistics) and the random generators as they were."""
    model = member.model
    saved = [b.detach().clone() for b in model.buffers()]
    device = batch["image"].device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            return member.engine.task_losses(model(batch["image"]), batch).double().cpu().tolist()
    finally:
        with torch.no_grad():
            for b, old in zip(model.buffers(), saved, strict=True):
                b.copy_(old)


class FiniteGuard:
    """Finds the first non-finite loss or update of a step, and warns once about divergence."""

    def __init__(self, tasks: tuple[str, ...], method: str) -> None:
        self.tasks = tasks
        self.method = method  # the run's method name, for messages
        self.skipped = 0  # steps skipped over the whole run
        self.first: list[list[float]] | None = None  # each member's first finite task losses
        self.warned = False

    def _bad_loss(self, member: Member, values: Sequence[float]) -> str | None:
        for task, v in zip(self.tasks, values, strict=True):
            if not math.isfinite(v):
                return f"the loss of task {task!r}{_who(member)} is {v}"
        return None

    def problem(
        self,
        members: Sequence[Member],
        results: list[StepResult] | None,
        batch: dict[str, Tensor],
        check_grads: bool = True,
    ) -> str | None:
        """What is non-finite in this step, or None. ``results`` is None when the engine already
        refused the update; the task losses are then evaluated again to name the task."""
        if results is None:
            for m in members:
                bad = self._bad_loss(m, loss_values(m, batch))
                if bad:
                    return bad
            return f"the update of method {self.method!r} is non-finite"
        for m, r in zip(members, results, strict=True):
            bad = self._bad_loss(m, r.losses.double().cpu().tolist())
            if bad:
                return bad
        for m in members if check_grads else ():  # fp16: the gradient scaler checks (and skips) them
            grads = [p.grad for p in m.model.parameters() if p.grad is not None]
            grads += [p.grad for p in m.method.parameters() if p.grad is not None]
            if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
                return f"the update (the gradients after method {self.method!r}){_who(m)} is non-finite"
        return None

    def divergence(self, results: list[StepResult]) -> str | None:
        """A one-time warning when a task loss grew :data:`DIVERGENCE_FACTOR` times over its first value."""
        values = [r.losses.double().cpu().tolist() for r in results]
        if self.first is None:
            self.first = values
            return None
        if self.warned:
            return None
        for member_values, member_first in zip(values, self.first, strict=True):
            for task, v, f in zip(self.tasks, member_values, member_first, strict=True):
                if v > DIVERGENCE_FACTOR * max(abs(f), 1e-3):
                    self.warned = True
                    return (
                        f"the loss of task {task!r} is {v:.3g}, over {DIVERGENCE_FACTOR:.0e} times its first "
                        f"value {f:.3g}: training is diverging; try a lower --lr"
                    )
        return None

    def skip_or_stop(self, where: str, problem: str, allowed: int, last: Path | None, resumed: bool) -> None:
        """Count a non-finite step at ``where`` as skipped if fewer than ``allowed`` were (a warning
        on stderr); else stop the run with a :class:`RuntimeFault` saying what was kept (``last``,
        the last good checkpoint, if any) and what to do."""
        if self.skipped < allowed:
            self.skipped += 1
            print(
                f"densemtl: warning: skipped {where}: {problem} ({self.skipped} of --skip-nonfinite {allowed})",
                file=sys.stderr,
            )
            return
        if last is not None:
            kept = f"the last good checkpoint {last} was kept (continue with --resume)"
        else:
            kept = "no checkpoint existed yet" + ("" if resumed else ", so the run directory was removed")
        spent = f" ({allowed} such steps were already skipped)" if allowed else ""
        raise RuntimeFault(
            f"training stopped at {where}: {problem}{spent}; {kept}; lower --lr, check the data, "
            "or pass --skip-nonfinite N to skip up to N such steps"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "first": self.first, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.first = state.get("first")
        self.warned = bool(state.get("warned", False))
