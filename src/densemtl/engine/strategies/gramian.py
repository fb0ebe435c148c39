"""The ``gramian`` mode: G = J Jᵀ from one vectorised backward pass, J never assembled.

For methods of the form c(G) @ J; see :mod:`densemtl.engine.gramian` for how G and c @ J are
computed parameter by parameter. Task-specific parameters get c_t times their gradient from one
backward of Σ_t c_t L_t restricted to them.

Across processes the Gramian of the global Jacobian Σ_r a_r J^r has cross-rank terms that no
rank's own pass gives, so the mode takes the parameters mode's way there: T backward passes,
each row all-reduced, then G and c @ J of the global J.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from densemtl.balancing.base import GramianWeighting
from densemtl.engine.gramian import gramian_and_grads
from densemtl.engine.strategies.base import Context, Forward, GradientStrategy, StepResult
from densemtl.engine.strategies.parameters import ParametersStrategy


class _Overflow(Exception):
    """The fp16 Gramian overflowed: the step is skipped."""


class GramianStrategy(GradientStrategy):
    """G from one vectorised backward (:mod:`densemtl.engine.gramian`), then the heads."""

    mode = "gramian"

    def __init__(self, ctx: Context, recompute_every: int = 1) -> None:
        super().__init__(ctx, recompute_every)
        #: across processes, the way the Jacobian is taken and reduced
        self.rows = ParametersStrategy(ctx, recompute_every) if ctx.comm.active else None

    def compute(self, fwd: Forward, objective: list[Tensor], step: int) -> StepResult:
        shared = self.ctx.shared
        if not shared:
            return self.unshared(fwd.losses, objective, step)
        if self.rows is not None:
            result = self.rows.compute(fwd, objective, step)
            self.coefficients = self.rows.coefficients
            return result
        method = cast(GramianWeighting, self.ctx.method)
        scale = self.ctx.precision.scale

        def weigh(G: Tensor) -> Tensor:  # of the unscaled Gramian; an overflow is found before the method
            G = G / scale**2
            if self.ctx.overflowed(G):
                raise _Overflow
            return method.weights_from_gramian(G)

        try:
            _, c, grads = gramian_and_grads(objective, shared, weigh)
        except _Overflow:
            return self.skipped(fwd.losses)
        present = [g for g in grads if g is not None]
        if present:
            self.ctx.check(torch.stack(torch._foreach_norm(present)), step)
        for p, g in zip(shared, grads, strict=True):
            p.grad = g
        heads = [p for own in self.ctx.own for p in own]
        if heads:
            torch.autograd.backward((c.detach() * torch.stack(objective)).sum(), inputs=heads)
        return self.result(fwd.losses, c, c)
