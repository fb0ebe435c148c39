"""Uncertainty weighting (UW): learnable homoscedastic log-variances weigh the task losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from densemtl.balancing import register
from densemtl.balancing.base import LossWeighting


@register("uw")
class UncertaintyWeighting(LossWeighting):
    r"""L = sum_t exp(-s_t) L_t + s_t, with learnable s_t = log sigma_t^2 (init 0).

    Kendall, Gal and Cipolla, "Multi-task learning using uncertainty to weigh losses for scene
    geometry and semantics", CVPR 2018, https://arxiv.org/abs/1705.07115.

    The paper's Gaussian likelihood gives 1/(2 sigma^2) L + log sigma; like most re-implementations
    we drop the constant factor 1/2 and learn s = log sigma^2, which is unconstrained and
    numerically stable. The reported weights are exp(-s_t); dL/ds_t = 1 - exp(-s_t) L_t, so at the
    optimum of s the weight of a task is 1 / L_t.

    The log-variances are returned by ``parameters()`` for the trainer's optimizer, so pass
    ``num_tasks`` to create them at construction (otherwise they appear at the first ``combine``,
    after the optimizer was built). ``lr``, when given, is the learning rate the trainer should use
    for them instead of the model's (``parameters_lr``).
    """

    def __init__(self, num_tasks: int | None = None, init: float = 0.0, lr: float | None = None) -> None:
        super().__init__()
        self.init = float(init)
        self.log_vars: nn.Parameter | None = None
        self.lr = None if lr is None else float(lr)
        if num_tasks is not None:
            self._create(int(num_tasks), torch.device("cpu"), torch.float32)

    def _create(self, num_tasks: int, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
        if num_tasks < 1:
            raise ValueError(f"UW needs at least one task, got num_tasks={num_tasks}")
        self.log_vars = nn.Parameter(torch.full((num_tasks,), self.init, device=device, dtype=dtype))
        return self.log_vars

    def _log_vars_for(self, losses: Tensor) -> nn.Parameter:
        if losses.dim() != 1:
            raise ValueError(f"UW expects a 1-D tensor of task losses, got shape {tuple(losses.shape)}")
        s = self.log_vars
        if s is None:
            return self._create(losses.numel(), losses.device, losses.dtype)
        if s.numel() != losses.numel():
            raise ValueError(f"UW was built for {s.numel()} tasks but got {losses.numel()} losses")
        if s.device != losses.device:
            # Moving .data keeps the Parameter object the trainer's optimizer already holds.
            s.data = s.data.to(losses.device)
        return s

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.log_vars is None else [self.log_vars]

    def parameters_lr(self) -> float | None:
        return self.lr

    def weights(self, losses: Tensor) -> Tensor:
        return torch.exp(-self._log_vars_for(losses).detach())

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        s = self._log_vars_for(losses)
        scalar = (torch.exp(-s).to(losses) * losses + s.to(losses)).sum()
        return scalar, torch.exp(-s.detach())

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": None if self.log_vars is None else self.log_vars.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("log_vars")
        if saved is None:
            return
        saved = torch.as_tensor(saved)
        if self.log_vars is None:
            self._create(saved.numel(), saved.device, saved.dtype)
        assert self.log_vars is not None
        if self.log_vars.numel() != saved.numel():
            raise ValueError(f"UW state has {saved.numel()} tasks, this method has {self.log_vars.numel()}")
        with torch.no_grad():
            self.log_vars.copy_(saved)

    def __repr__(self) -> str:
        return f"UncertaintyWeighting(num_tasks={None if self.log_vars is None else self.log_vars.numel()})"
