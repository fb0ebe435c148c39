"""Geometric loss strategy (GLS): minimise the geometric mean of the task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import LossWeighting


@register("gls")
class GeometricLossStrategy(LossWeighting):
    r"""L = (prod_t L_t)^(1/T), so that dL/dL_t = L / (T L_t).

    Chennupati, Sistu, Yogamani and Rawashdeh, "MultiNet++: multi-stream feature aggregation and
    geometric loss strategy for multi-task learning", CVPR Workshops 2019,
    https://arxiv.org/abs/1904.08492.

    The geometric mean is computed as exp(mean_t log L_t), which neither overflows nor underflows
    for many tasks; the losses must be positive. The reported weights are the effective weights
    dL/dL_t = L / (T L_t): a task with a small loss is weighted up, which makes the update
    invariant to rescaling any one loss.
    """

    def __init__(self, num_tasks: int | None = None) -> None:
        super().__init__()
        self.num_tasks = num_tasks

    def _check(self, losses: Tensor) -> None:
        if losses.dim() != 1:
            raise ValueError(f"GLS expects a 1-D tensor of task losses, got shape {tuple(losses.shape)}")
        if self.num_tasks is not None and losses.numel() != self.num_tasks:
            raise ValueError(f"GLS was built for {self.num_tasks} tasks but got {losses.numel()} losses")

    def weights(self, losses: Tensor) -> Tensor:
        self._check(losses)
        geo = torch.exp(torch.log(losses).mean())
        return geo / (losses.numel() * losses)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        self._check(losses)
        scalar = torch.exp(torch.log(losses).mean())
        return scalar, self.weights(losses.detach())
