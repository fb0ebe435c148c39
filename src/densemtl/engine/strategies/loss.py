"""The ``loss`` mode: one backward of a loss weighting's combined scalar.

A method that declares ``Requirements.layer_grad_norms`` (GradNorm) is given ‖∇_W L_t‖ for one
shared layer W before each ``combine``: the parameter it names, or ("auto") the last shared
weight matrix or kernel in computation order, found in the first step's graph. On a model with
a shared representation the norms come from per-task head passes that the update reuses when
the method's combined loss is exactly Σ_t w_t L_t (``weighted_sum``); see
:mod:`densemtl.engine.layer_norms` for why the T norms cost little more than an EW step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from densemtl.balancing.base import LossWeighting
from densemtl.engine.layer_norms import (
    head_passes,
    last_shared_kernel,
    layer_grad_norms,
    split_layer_norms,
    split_weighted_backward,
)
from densemtl.engine.strategies.base import Context, Forward, StepResult, Strategy
from densemtl.errors import ConfigError
from densemtl.plugin_contracts import guarded


class LossStrategy(Strategy):
    """backward(combine(losses)), with the layer norms first where the method asks for them."""

    mode = "loss"

    def __init__(self, ctx: Context, recompute_every: int = 1) -> None:
        super().__init__(ctx, recompute_every)
        self.method = cast(LossWeighting, ctx.method)
        req = ctx.method.requirements
        self.wants_norms = req.layer_grad_norms is not None
        self.weighted_sum = req.weighted_sum
        self.norm_layer: nn.Parameter | None = None
        self.searched = False  # whether the "auto" layer was looked for in a step's graph
        #: the forward stops at the representation, so that the norms come from head passes (in one
        #: process: across processes the norms are those of the reduced layer gradients)
        self.split = self.wants_norms and ctx.has_representation and bool(ctx.shared) and not ctx.comm.active
        self.split = self.split and ctx.precision.scaler is None  # fp16: one scaled backward
        if req.layer_grad_norms not in (None, "auto"):
            self.norm_layer_name, self.norm_layer = self._named_layer(req.layer_grad_norms)

    def _named_layer(self, wanted: str) -> tuple[str, nn.Parameter]:
        """The shared parameter called ``wanted``, or a ConfigError naming the last candidates."""
        named = self.ctx.named_shared()
        for name, p in named:
            if name == wanted:
                return name, p
        some = ", ".join([n for n, p in named if p.dim() >= 2][-5:]) or "none"
        raise ConfigError(
            f"{type(self.method).__name__} knob 'layer': {wanted!r} is not a shared parameter of "
            f"{self.ctx.owner}; the last shared weights are: {some}"
        )

    def splits_forward(self, step: int) -> bool:
        return self.split

    def backward(self, fwd: Forward, extra: Sequence[Tensor] | None, step: int) -> StepResult:
        losses = fwd.losses
        rep, rep_in = fwd.rep, fwd.rep_in
        if self.wants_norms and self.norm_layer is None and not self.searched:
            roots = [rep] if rep is not None else fwd.parts
            found = last_shared_kernel(self.ctx.named_shared(), self.ctx.kernels(), roots)
            self.norm_layer_name, self.norm_layer = found
            self.searched = True
        pieces = None
        if self.norm_layer is not None:
            if self.ctx.comm.active:
                norms = self._global_layer_norms(fwd.parts, self.norm_layer)
            elif rep is not None and rep_in is not None:
                pieces = head_passes(fwd.parts, rep_in, self.ctx.own)
                norms = split_layer_norms(rep, pieces[0], self.norm_layer)
            else:
                norms = layer_grad_norms(fwd.parts, self.norm_layer)
            self.method.observe_grad_norms(norms)
        scalar, weights = guarded(self.method, "combine(losses)", lambda: self.method.combine(losses))
        if extra is not None:
            scalar = scalar + torch.stack(list(extra)).sum()
        if self.ctx.comm.active or not torch.isfinite(scalar):
            self.ctx.check(scalar.detach().reshape(1), step)
        if pieces is not None and extra is None and self.weighted_sum:
            assert rep is not None
            split_weighted_backward(rep, pieces[0], pieces[1], self.ctx.own, weights)
        else:
            scale = self.ctx.precision.scale  # fp16's loss scale; the scaler divides it out again
            (scalar * scale if scale != 1.0 else scalar).backward()
            if rep is not None and rep_in is not None and rep_in is not rep:
                rep.backward(rep_in.grad if rep_in.grad is not None else torch.zeros_like(rep))
        self.ctx.comm.reduce_grads([*self.ctx.parameters(), *self.method.parameters()])
        return StepResult(losses.detach(), weights.detach())

    def _global_layer_norms(self, parts: list[Tensor], W: nn.Parameter) -> Tensor:
        """‖∇_W L_t‖ of the global losses: each task's local gradient at W, reduced across ranks."""
        rows = torch.zeros(len(parts), W.numel(), dtype=W.dtype, device=W.device)
        for t, part in enumerate(parts):
            (g,) = torch.autograd.grad(part, W, retain_graph=True, allow_unused=True)
            if g is not None:
                rows[t] = g.reshape(-1)
        self.ctx.comm.reduce_(rows)
        return torch.linalg.vector_norm(rows, dim=1).detach()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "norm_layer": self.norm_layer_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        name = state.get("norm_layer")
        if self.wants_norms and name is not None:
            self.norm_layer_name, self.norm_layer = self._named_layer(name)
            self.searched = True
