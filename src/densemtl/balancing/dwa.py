"""Dynamic weight average (DWA): weigh each task by how slowly its loss fell last epoch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import LossWeighting, Requirements
from densemtl.errors import ConfigError


@register("dwa")
class DynamicWeightAverage(LossWeighting):
    r"""w_t(e) = T exp(r_t / temp) / sum_k exp(r_k / temp),  r_t = L_t(e-1) / L_t(e-2).

    Liu, Johns and Davison, "End-to-end multi-task learning with attention", CVPR 2019,
    https://arxiv.org/abs/1803.10704 (Eq. 7).

    L_t(e) is task t's mean training loss over epoch e, received through ``end_epoch``; the weights
    stay fixed within an epoch, sum to T, and are all 1 until two epochs have been seen.
    ``temperature`` is the paper's T (2 in the paper); a larger value gives more uniform weights.
    """

    requirements = Requirements(sources=("losses",), weighted_sum=True, weights_from_losses=False)

    def __init__(self, num_tasks: int | None = None, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"dwa: temperature must be > 0, got {temperature}")
        self.num_tasks = num_tasks
        self.temperature = float(temperature)
        # the mean losses of the last two epochs, oldest first
        self.history: list[Tensor] = []

    def _check(self, n: int) -> None:
        if self.num_tasks is None:
            self.num_tasks = n
        elif n != self.num_tasks:
            raise ValueError(f"DWA was built for {self.num_tasks} tasks but got {n} losses")

    def end_epoch(self, epoch: int, mean_losses: Tensor) -> None:
        mean_losses = torch.as_tensor(mean_losses).detach().reshape(-1).to("cpu", torch.float64)
        self._check(mean_losses.numel())
        self.history = [*self.history, mean_losses][-2:]

    def weights(self, losses: Tensor) -> Tensor:
        if losses.dim() != 1:
            raise ValueError(f"DWA expects a 1-D tensor of task losses, got shape {tuple(losses.shape)}")
        self._check(losses.numel())
        if len(self.history) < 2:
            return torch.ones_like(losses)
        before, last = self.history
        ratio = last / before
        w = losses.numel() * torch.softmax(ratio / self.temperature, dim=0)
        return w.to(losses)

    def state_dict(self) -> dict[str, Any]:
        return {"num_tasks": self.num_tasks, "history": [h.clone() for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_tasks = state.get("num_tasks", self.num_tasks)
        self.history = [torch.as_tensor(h).to("cpu", torch.float64).clone() for h in state["history"]]

    def __repr__(self) -> str:
        return f"DynamicWeightAverage(temperature={self.temperature})"
