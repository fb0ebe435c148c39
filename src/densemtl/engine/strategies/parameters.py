"""The ``parameters`` mode: the Jacobian J (T x P) of the shared parameters, by T backward passes.

The passes fill one preallocated buffer and the method's vector is written into ``.grad``. A
method whose source is "rows" (MAO) takes each row as its pass finishes, and the buffer holds
one row, reused. Task-specific parameters get their own task's gradient, times w_t where the
method defines task weights (c(G), or ``row_weights``).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from densemtl.balancing.base import Aggregator
from densemtl.engine.buffers import JacobianBuffer
from densemtl.engine.strategies.base import Context, Forward, GradientStrategy, StepResult


class ParametersStrategy(GradientStrategy):
    """T backward passes; autograd accumulates task t's shared gradients straight into row t of
    the Jacobian buffer (each parameter's ``.grad`` is a view of it), so no gradient vector is
    allocated or copied, and task t's head gets its gradient in its ``.grad``."""

    mode = "parameters"

    def __init__(self, ctx: Context, recompute_every: int = 1) -> None:
        super().__init__(ctx, recompute_every)
        self.streams = ctx.method.requirements.streams_rows
        #: the (T, P) Jacobian buffer (one row when the method streams rows), made at the first step
        self.buffer: JacobianBuffer | None = None

    def compute(self, fwd: Forward, objective: list[Tensor], step: int) -> StepResult:
        ctx = self.ctx
        T = len(objective)
        if not ctx.shared:
            return self.unshared(fwd.losses, objective, step)
        method = cast(Aggregator, ctx.method)
        if self.buffer is None:
            self.buffer = JacobianBuffer(ctx.shared, 1 if self.streams else T)
        jac = self.buffer
        if self.streams:
            method.start_rows(T, jac.matrix[0], out=jac.update)
        for t in range(T):
            jac.bind_row(0 if self.streams else t)
            torch.autograd.backward(objective[t], inputs=ctx.shared + ctx.own[t], retain_graph=t < T - 1)
            if self.streams:
                method.add_row(t, jac.matrix[0])
        if self.streams:
            vec, c, w = method.finish_rows(), None, self.row_weights(jac.matrix)
        else:
            vec, c, w = self.combine(jac.matrix, out=jac.update)
        ctx.check(vec, step)
        jac.set_grads(vec)
        for t in range(T):
            if w is not None and float(w[t]) != 1.0:
                for p in ctx.own[t]:
                    if p.grad is not None:
                        p.grad.mul_(float(w[t]))
        return self.result(fwd.losses, c, w)
