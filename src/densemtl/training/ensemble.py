"""Averaging the predictions of several multi-task networks (MDML's ensemble)."""

from __future__ import annotations

from torch import Tensor, nn

from densemtl import tasks as task_registry


class Ensemble(nn.Module):
    """The ensemble of two or more multi-task networks: each task averages its members'
    predictions its own way (:meth:`densemtl.tasks.Task.ensemble`; e.g. class probabilities
    returned as log-probs, so argmax and softmax behave; depth the mean; normals the sum of the
    normalised predictions)."""

    def __init__(self, *members: nn.Module) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an Ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outs = [m(x) for m in self.members]
        return {t: task_registry.get(t).ensemble([o[t] for o in outs]) for t in outs[0]}
