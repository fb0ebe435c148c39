"""The ``parameters`` mode: the Jacobian J (T x P) of the shared parameters, by T backward passes.

The passes fill one preallocated buffer and the method's vector is written into ``.grad``. A
method whose source is "rows" (MAO) takes each row as its pass finishes, and the buffer holds
one row, reused. Task-specific parameters get their own task's gradient, times w_t where the
method defines task weights (c(G), or ``row_weights``).

Across processes every row is reduced (Σ_r a_r J^r_t) before the method sees it, so every rank
aggregates the same J: row t's all-reduce runs while row t+1's backward pass does (a streaming
method gets each row reduced before ``add_row``); the heads' gradients are reduced at the end.
"""

from __future__ import annotations

import copy
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
        comm = ctx.comm
        scale = ctx.precision.scale  # fp16: rows are divided by S before the method sees them
        saved = None
        if self.streams:
            if scale != 1.0:  # an overflow in a later row must leave the method as it was
                saved = copy.deepcopy(method.state_dict())
            method.start_rows(T, jac.matrix[0], out=jac.update)
        pending = []
        for t in range(T):
            jac.bind_row(0 if self.streams else t)
            torch.autograd.backward(objective[t], inputs=ctx.shared + ctx.own[t], retain_graph=t < T - 1)
            if self.streams:
                comm.reduce_(jac.matrix[0])
                if scale != 1.0:
                    jac.matrix[0].div_(scale)
                    if ctx.overflowed(jac.matrix[0]):  # identical on every rank after the reduction
                        method.load_state_dict(saved or {})
                        return self.skipped(fwd.losses)
                method.add_row(t, jac.matrix[0])
            elif comm.active:
                pending += comm.reduce_buckets_(jac.matrix[t])
        for work in pending:
            work.wait()
        if scale != 1.0 and not self.streams:
            jac.matrix.div_(scale)
            if ctx.overflowed(jac.matrix):
                return self.skipped(fwd.losses)
        if self.streams:
            vec, c, w = method.finish_rows(), None, self.row_weights(jac.matrix)
        else:
            vec, c, w = self.combine(jac.matrix, out=jac.update)
        ctx.check(vec, step)
        jac.set_grads(vec)
        if scale != 1.0:
            jac.update.mul_(scale)  # scaled again, for the scaler to unscale and check
        for t in range(T):
            if w is not None and float(w[t]) != 1.0:
                for p in ctx.own[t]:
                    if p.grad is not None:
                        p.grad.mul_(float(w[t]))
        comm.reduce_grads(ctx.heads)
        return self.result(fwd.losses, c, w)
