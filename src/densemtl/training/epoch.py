"""The running totals of one training epoch: what its record's training fields are made of.

Per member and task, the sums of the step losses and of the task weights (float64), the number
of steps summed and of non-finite steps skipped. A mid-epoch checkpoint keeps them
(:meth:`EpochTotals.state_dict`), so that a resumed epoch's record equals the uninterrupted one's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from densemtl.engine import StepResult


class EpochTotals:
    """Sums over the steps of an epoch for ``members`` networks and ``tasks``."""

    def __init__(self, members: int, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self.sums = torch.zeros(members, 2, len(self.tasks), dtype=torch.float64)  # (member, loss/weight, task)
        self.steps = 0  # steps summed
        self.nonfinite = 0  # steps skipped
        self.amp_skipped = 0  # steps the fp16 gradient scaler skipped (overflow)

    def add(self, results: Sequence[StepResult]) -> None:
        """Count one step: every member's task losses and weights."""
        for i, r in enumerate(results):
            self.sums[i, 0] += r.losses.double().cpu()
            self.sums[i, 1] += r.weights.double().cpu()
        self.steps += 1

    def means(self) -> Tensor:
        """(member, loss/weight, task) means over the steps summed (zeros before the first)."""
        return self.sums / max(self.steps, 1)

    def main_losses(self) -> dict[str, float]:
        """The main network's mean task losses so far (for the progress bar)."""
        return dict(zip(self.tasks, self.means()[0, 0].tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums.clone(),
            "n": self.steps,
            "nonfinite": self.nonfinite,
            "amp_skipped": self.amp_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.steps, self.nonfinite = state["sums"].clone(), int(state["n"]), int(state["nonfinite"])
        self.amp_skipped = int(state["amp_skipped"])


def end_epoch(members: Sequence[Any], totals: EpochTotals, epoch: int) -> dict[str, Any]:
    """Close epoch ``epoch`` for every member (its LR schedule's step, its method's ``end_epoch``
    with the epoch's mean losses) and return the record's ``train_loss`` and ``weights`` fields."""
    means = totals.means()
    record: dict[str, Any] = {}
    for i, m in enumerate(members):
        with warnings.catch_warnings():  # a resumed epoch's last steps may all be done already
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before", UserWarning)
            m.scheduler.step()
        m.method.end_epoch(epoch, means[i, 0].float())
        record[m.key("train_loss")] = dict(zip(totals.tasks, means[i, 0].tolist(), strict=True))
        record[m.key("weights")] = dict(zip(totals.tasks, means[i, 1].tolist(), strict=True))
    return record
