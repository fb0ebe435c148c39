"""The ``representation`` mode: per-task gradients with respect to the shared representation.

Each task's gradient is taken of the representation r alone (through its head only), the method
aggregates those T rows, and one backward of r with the aggregate trains the encoder: the idea
of MGDA-UB, about the cost of one plain step. Task-specific parameters get their own task's
gradient, times w_t where the method defines task weights (c(G), or ``row_weights``).

Across processes rank r's rows are block r of the global Jacobian, scaled by its share a_r of the
batch: a method of the Gramian gets G = Σ_r a_r² G^r (a T × T all-reduce) and each rank applies
c @ J^r to its own representation; any other method aggregates the gathered global matrix and
each rank takes its own columns. The encoder's and heads' gradients are then reduced as in DDP.
J is kept in float32 whatever the representation's precision.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.balancing.base import GramianWeighting
from densemtl.engine.gramian import gramian
from densemtl.engine.strategies.base import Forward, GradientStrategy, StepResult

#: floating-point types too narrow for a Jacobian (autocast's)
LOW = (torch.float16, torch.bfloat16)


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
        J = torch.empty(T, rep.numel(), dtype=torch.float32 if rep.dtype in LOW else rep.dtype, device=rep.device)
        head_grads = []
        for t in range(T):
            grads = torch.autograd.grad(objective[t], [rep_in, *own[t]], retain_graph=t < T - 1, allow_unused=True)
            J[t] = grads[0].reshape(-1) if grads[0] is not None else 0.0
            head_grads.append(grads[1:])
        scale = self.ctx.precision.scale
        if scale != 1.0:
            J.div_(scale)  # the method sees the unscaled rows; the heads' gradients stay scaled for the scaler
            if self.ctx.overflowed(J):
                return self.skipped(fwd.losses)
        vec, c, w = self.combine_global(J) if self.ctx.comm.active else self.combine(J)
        self.ctx.check(vec, step)
        rep.backward((vec * scale if scale != 1.0 else vec).view_as(rep).to(rep.dtype))
        for t in range(T):
            scale = float(w[t]) if w is not None else 1.0
            for p, g in zip(own[t], head_grads[t], strict=True):
                if g is not None:
                    p.grad = g * scale if scale != 1.0 else g
        self.ctx.comm.reduce_grads(self.ctx.shared + self.ctx.heads)
        return self.result(fwd.losses, c, w)

    def combine_global(self, J: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """:meth:`combine` of the global Jacobian whose block on this rank is a_r J: this rank's part
        of the update, divided by a_r (the gradients of the ranks are then summed with weights a_r)."""
        comm = self.ctx.comm
        if self.from_gramian:
            method = self.ctx.method
            assert isinstance(method, GramianWeighting)
            c = method.weights_from_gramian(comm.gramian(gramian(J))).to(J)
            return c @ J, c, c
        full, lo, hi = comm.gather_columns(J)
        vec, _, w = self.combine(full)
        return vec[lo:hi] / comm.share, None, w
