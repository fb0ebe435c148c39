"""ExcessMTL: weigh tasks up by their estimated excess risk (distance to their own optimum)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import Aggregator, Requirements


@register("excessmtl")
class ExcessMTL(Aggregator):
    r"""ExcessMTL: exponentiated-gradient task weights driven by excess-risk estimates.

    He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi and Zhao, "Robust Multi-Task Learning with Excess
    Risks", ICML 2024, https://arxiv.org/abs/2402.02009.

    A second-order Taylor expansion around a task's own optimum gives its excess risk as
    about g_tᵀ H_t^-1 g_t; H_t is estimated per task and per coordinate as in AdaGrad. Per call:

        S_t <- S_t + g_t ⊙ g_t,   e_t = sum_p g_tp² / sqrt(S_tp + 1e-7),
        a_t <- a_t exp(eta e_t / e_t^0),  a <- T a / sum(a),   out = Jᵀ a,

    with eta = ``robust_step_size`` and e_t^0 the task's first excess risk, which makes the
    estimates comparable across tasks of different scales. As in the authors' code the weights
    start at 1 (out = sum of the rows), sum to T, and the first call only records e^0. Where a
    task's first gradient is zero, its baseline is taken at its first non-zero gradient instead
    (the authors' code would divide by zero).

    As in the authors' code and LibMTL, whose update is the backward of Σ_t a_t L_t, each task's
    own (task-specific) parameters get a_t times their gradient too (``row_weights``).

    The state S_t is as large as J and follows each of its coordinates across steps, so
    ExcessMTL runs in parameters mode only (``Requirements.coordinate_state``): the
    representation's gradient belongs to one batch and changes size with it. S is restarted if
    the shape of J changes (other tasks or parameters).
    """

    requirements = Requirements(sources=("jacobian",), coordinate_state=True)

    def __init__(self, robust_step_size: float = 1e-2) -> None:
        super().__init__()
        if robust_step_size <= 0:
            raise ValueError(f"ExcessMTL needs robust_step_size > 0, got {robust_step_size}")
        self.robust_step_size = float(robust_step_size)
        self.sq_grad_sum: Tensor | None = None
        self.baseline: Tensor | None = None
        self.log_weights: Tensor | None = None

    def aggregate(self, J: Tensor) -> Tensor:
        T = J.shape[0]
        J = J.detach()
        if self.sq_grad_sum is None or self.sq_grad_sum.shape != J.shape:
            self.sq_grad_sum = torch.zeros_like(J)
            self.baseline = torch.zeros(T, dtype=torch.float64)
            self.log_weights = torch.zeros(T, dtype=torch.float64)
        assert self.baseline is not None and self.log_weights is not None
        sq = J * J
        self.sq_grad_sum = self.sq_grad_sum.to(J) + sq
        excess = (sq / torch.sqrt(self.sq_grad_sum + 1e-7)).sum(dim=1).double().cpu()
        excess = torch.nan_to_num(excess, nan=0.0, posinf=0.0)
        known = self.baseline > 0
        ratio = torch.where(known, excess / self.baseline.clamp_min(1e-300), torch.zeros_like(excess))
        ratio = ratio.clamp_max(1e30)
        self.baseline = torch.where(known, self.baseline, excess)
        # Log-space update: a task whose excess risk explodes saturates the weights instead of
        # overflowing exp() to inf and turning them into nan for good.
        logits = self.log_weights + self.robust_step_size * ratio
        self.log_weights = torch.log_softmax(logits, dim=0) + math.log(T)
        return torch.exp(self.log_weights).to(J) @ J

    def row_weights(self) -> Tensor | None:
        """a of the last call (None before the first): out = aᵀJ."""
        return self.task_weights

    @property
    def task_weights(self) -> Tensor | None:
        """The task weights learnt so far: a (T,), summing to T (None before the first call)."""
        return None if self.log_weights is None else torch.exp(self.log_weights)

    def state_dict(self) -> dict[str, Any]:
        def copy(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.clone()

        return {
            "sq_grad_sum": copy(self.sq_grad_sum),
            "baseline": copy(self.baseline),
            "log_weights": copy(self.log_weights),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sq, base, logw = state.get("sq_grad_sum"), state.get("baseline"), state.get("log_weights")
        self.sq_grad_sum = None if sq is None else torch.as_tensor(sq).clone()
        self.baseline = None if base is None else torch.as_tensor(base, dtype=torch.float64).clone()
        self.log_weights = None if logw is None else torch.as_tensor(logw, dtype=torch.float64).clone()

    def __repr__(self) -> str:
        return f"ExcessMTL(robust_step_size={self.robust_step_size})"
