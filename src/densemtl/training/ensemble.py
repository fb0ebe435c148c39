"""Averaging the predictions of several multi-task networks (MDML's ensemble)."""

from __future__ import annotations

from torch import Tensor, nn

from densemtl.tasks import TaskSet


class Ensemble(nn.Module):
    """The ensemble of two or more multi-task networks: each task averages its members'
    predictions its own way (:meth:`densemtl.tasks.Task.ensemble`; e.g. class probabilities
    returned as log-probs, so argmax and softmax behave; depth the mean; normals the sum of the
    normalised predictions). ``tasks``: the run's TaskSet (default: the members' tasks with their
    defaults, built at the first forward)."""

    def __init__(self, *members: nn.Module, tasks: TaskSet | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an Ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.task_set = tasks

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outs = [m(x) for m in self.members]
        if self.task_set is None:
            self.task_set = TaskSet(outs[0])
        return self.task_set.ensemble(outs)
