"""The ``representation`` mode: per-task gradients with respect to the shared representation.

Each task's gradient is taken of the representation r alone (through its head only), the method
aggregates those T rows, and one backward of r with the aggregate trains the encoder: the idea
of MGDA-UB, about the cost of one plain step. Task-specific parameters get their own task's
gradient, times w_t where the method defines task weights (c(G), or ``row_weights``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.engine.strategies.base import Forward, GradientStrategy, StepResult


class RepresentationStrategy(GradientStrategy):
    """J of the shared representation r (heads only), then one backward of r with the update."""

    mode = "representation"

    def splits_forward(self, step: int) -> bool:
        return not self.reusing(step)

    def compute(self, fwd: Forward, objective: list[Tensor], step: int) -> StepResult:
        rep, rep_in = fwd.rep, fwd.rep_in
        assert rep is not None and rep_in is not None
        own = self.ctx.own
        T = len(objective)
        J = torch.empty(T, rep.numel(), dtype=rep.dtype, device=rep.device)
        head_grads = []
        for t in range(T):
            grads = torch.autograd.grad(objective[t], [rep_in, *own[t]], retain_graph=t < T - 1, allow_unused=True)
            J[t] = grads[0].reshape(-1) if grads[0] is not None else 0.0
            head_grads.append(grads[1:])
        vec, c, w = self.combine(J)
        self.ctx.check(vec, step)
        rep.backward(vec.view_as(rep))
        for t in range(T):
            scale = float(w[t]) if w is not None else 1.0
            for p, g in zip(own[t], head_grads[t], strict=True):
                if g is not None:
                    p.grad = g * scale if scale != 1.0 else g
        return self.result(fwd.losses, c, w)
