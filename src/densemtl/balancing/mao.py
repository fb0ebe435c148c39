"""MAO: Adam moments per task and per parameter; the step is their reduced normalised sum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import OptimizerMethod, Requirements

REDUCTIONS = ("sum", "mean")


@register("mao")
class MAO(OptimizerMethod):
    r"""Multi-adaptive optimization (MAO): each task's contribution is normalised per parameter.

    For the shared parameters, with g_t the t-th row of J and k the number of calls so far:

        m_t ← β1 m_t + (1 − β1) g_t,      v_t ← β2 v_t + (1 − β2) g_t²,
        m̂_t = m_t / (1 − β1^k),          v̂_t = v_t / (1 − β2^k),
        d = reduce_t m̂_t / (√v̂_t + ε),   reduce = Σ_t ("sum", default) or (1/T) Σ_t ("mean"),

    and ``aggregate(J)`` returns d, which the trainer applies as θ ← θ − lr·d with plain SGD (no
    momentum, no Adam on top; ``Requirements.optimizer == "sgd"``). Each task's step is Adam-normalised
    separately, so no task dominates a parameter by the size of its gradient. Task-specific
    parameters see one task only, where MAO is Adam: the trainer trains them with AdamW on their
    own task's gradient with the same betas, eps and weight decay (``optimizer_options``).

    Weight decay is decoupled (AdamW): θ ← θ − lr·wd·θ − lr·d. The trainer gets it from
    ``torch.optim.SGD(weight_decay=wd)``, which for plain SGD is exactly that (the decay is not
    normalised by any moment), and from ``AdamW(weight_decay=wd)`` for the task parameters.

    Memory: 2·T moments per shared parameter (m and v, T×P each, in at least float32); the engine
    hands MAO the Jacobian one row at a time (source "rows"), so J itself takes one row. The
    moments are per parameter, so MAO runs in parameters mode only (``coordinate_state``: the
    engine refuses ``--grad-mode representation``), and a J of another shape than the moments'
    is an error.

    Hervella, Rouco, Novo & Ortega, "Multi-Adaptive Optimization for multi-task learning with deep
    neural networks", Neural Networks 170 (2024) 254–265, https://doi.org/10.1016/j.neunet.2023.11.038
    (closest twin with code: AdaTask, Yang et al., AAAI 2023). No code or equations are public:
    the update above is our reading of the abstract (per-task Adam moments, summed), not a copy.
    """

    # the engine gives J row by row and keeps one row, not T
    requirements = Requirements(sources=("rows",), coordinate_state=True, optimizer="sgd")

    def __init__(
        self,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(betas)}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.betas: tuple[float, float] = (betas[0], betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.reduction = reduction
        self.num_steps = 0
        self.exp_avg: Tensor | None = None
        self.exp_avg_sq: Tensor | None = None
        # the step being built by start_rows / add_row / finish_rows
        self._out: Tensor | None = None
        self._num_rows = 0
        self._out_dtype = torch.float32

    def optimizer_options(self) -> dict[str, Any]:
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def _moments(self, shape: tuple[int, int], like: Tensor) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(like.dtype, torch.float32)
        if self.exp_avg is None or self.exp_avg_sq is None:
            self.exp_avg = torch.zeros(shape, dtype=dtype, device=like.device)
            self.exp_avg_sq = torch.zeros(shape, dtype=dtype, device=like.device)
        if tuple(self.exp_avg.shape) != tuple(shape):
            raise ValueError(
                f"MAO keeps moments for a Jacobian of shape {tuple(self.exp_avg.shape)}, got {tuple(shape)}: "
                "it must see the same tasks and shared parameters at every step (parameters mode)"
            )
        if self.exp_avg.device != like.device:  # e.g. moments restored on the CPU, J on the GPU
            self.exp_avg, self.exp_avg_sq = self.exp_avg.to(like.device), self.exp_avg_sq.to(like.device)
        return self.exp_avg, self.exp_avg_sq

    def start_rows(self, num_tasks: int, like: Tensor, out: Tensor | None = None) -> None:
        m, _ = self._moments((num_tasks, like.numel()), like)
        self.num_steps += 1
        self._num_rows = num_tasks
        self._out_dtype = like.dtype
        if out is not None and out.dtype == m.dtype and out.numel() == like.numel():
            self._out = out.reshape(-1).zero_()  # the engine's update buffer: no extra P-vector
        else:
            self._out = torch.zeros(like.numel(), dtype=m.dtype, device=m.device)

    def add_row(self, t: int, g: Tensor) -> None:
        """Fold task t's gradient into its moments and its normalised step into the update."""
        assert self.exp_avg is not None and self.exp_avg_sq is not None
        assert self._out is not None, "start_rows first"
        m, v = self.exp_avg[t], self.exp_avg_sq[t]
        g = g.detach().reshape(-1).to(m.dtype)
        beta1, beta2 = self.betas
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        root_bias2 = (1.0 - beta2**self.num_steps) ** 0.5
        s = torch.sqrt(v).div_(root_bias2).add_(self.eps)  # a transient P-vector, between passes
        torch.div(m, s, out=s)
        self._out.add_(s, alpha=1.0 / (1.0 - beta1**self.num_steps))

    def finish_rows(self) -> Tensor:
        out = self._out
        assert out is not None, "start_rows first"
        if self.reduction == "mean" and self._num_rows > 0:
            out.div_(self._num_rows)
        self._out = None
        return out.to(self._out_dtype)

    def aggregate(self, J: Tensor) -> Tensor:
        """The rows of J one at a time (temporaries of size P, not T x P)."""
        self.start_rows(J.shape[0], J[0] if len(J) else J.new_zeros(J.shape[1]))
        for t in range(J.shape[0]):
            self.add_row(t, J[t])
        return self.finish_rows()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.num_steps,
            "exp_avg": None if self.exp_avg is None else self.exp_avg.clone(),
            "exp_avg_sq": None if self.exp_avg_sq is None else self.exp_avg_sq.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state.get("step", 0))
        m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        self.exp_avg = None if m is None else m.detach().clone()
        self.exp_avg_sq = None if v is None else v.detach().clone()

    def __repr__(self) -> str:
        return (
            f"MAO(betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}, reduction={self.reduction!r})"
        )
