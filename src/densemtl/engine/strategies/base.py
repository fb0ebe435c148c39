"""What every strategy shares: the step's data, the run it serves, and the gradient-method core.

A strategy turns one forward pass's task losses into ``.grad`` for one gradient source (the
losses, the representation, the Gramian, the Jacobian). The engine builds exactly one, from the
method's :class:`~densemtl.balancing.base.Requirements`, and calls nothing else of the method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from densemtl.balancing.base import Aggregator, BalancingMethod, GramianWeighting
from densemtl.distributed import Comm
from densemtl.engine.gramian import gramian
from densemtl.engine.layer_norms import kernel_ids
from densemtl.engine.precision import Precision, mark_overflow
from densemtl.engine.protocols import EngineModel
from densemtl.errors import DenseMTLError
from densemtl.plugin_contracts import check_vector, guarded


class NonFiniteGradientError(DenseMTLError):
    """The combined update contains NaN or inf: the step is refused, not applied."""


@dataclass
class Forward:
    """One forward pass: predictions, each task's loss (``parts``, T scalars), and in representation
    mode the shared representation (``rep``) and its detached, grad-requiring copy the heads read
    (``rep_in``).

    Per-task gradients are taken of ``parts[t]``, never of ``losses[t]``: indexing the stacked
    vector would send zero cotangents back through every other task's head. When the caller ran
    the forward pass itself (:func:`densemtl.backward` with ``features``), ``rep_in`` is ``rep``:
    the gradients at ``rep`` are taken without traversing the graph below it.
    """

    preds: dict[str, Tensor]
    parts: list[Tensor]
    rep: Tensor | None = None
    rep_in: Tensor | None = None

    @property
    def losses(self) -> Tensor:
        """The task losses as one (T,) vector."""
        return torch.stack(self.parts)


@dataclass
class StepResult:
    """Detached task losses (T,) and the task weights the method used (T,)."""

    losses: Tensor
    weights: Tensor
    #: the fp16 gradients overflowed: the scaler skips the step (the method saw nothing)
    overflow: bool = False


@dataclass
class Context:
    """The run a strategy serves: model, method, tasks, the shared and per-task parameters, and
    the processes it runs in (``comm``; one by default).

    ``model`` is None when the caller owns the forward pass (:func:`densemtl.backward` on any
    ``nn.Module``): the strategies then read only the parameter lists, ``representation`` says
    whether a shared representation is given, and ``names`` name the shared parameters.
    """

    model: EngineModel | None
    method: BalancingMethod
    tasks: tuple[str, ...]
    shared: list[nn.Parameter]
    own: list[list[nn.Parameter]]
    comm: Comm = field(default_factory=Comm)
    precision: Precision = field(default_factory=Precision)
    #: whether the forward pass offers one shared representation (default: the model's say)
    representation: bool | None = None
    #: the names of ``shared``, in order (default: the model's, or ``shared_params[i]``)
    names: list[str] | None = None

    @property
    def heads(self) -> list[nn.Parameter]:
        """Every task-specific parameter."""
        return [p for own in self.own for p in own]

    @property
    def has_representation(self) -> bool:
        """Whether the forward pass can stop at one shared representation."""
        if self.representation is not None:
            return self.representation
        return self.model is not None and self.model.has_representation

    @property
    def owner(self) -> str:
        """What the shared parameters belong to, for messages."""
        return type(self.model).__name__ if self.model is not None else "shared_params"

    def named_shared(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every shared parameter."""
        if self.names is not None:
            return list(zip(self.names, self.shared, strict=True))
        if self.model is not None:
            return list(self.model.named_shared_parameters())
        return [(f"shared_params[{i}]", p) for i, p in enumerate(self.shared)]

    def kernels(self) -> set[int]:
        """The ids of the model's convolution and linear weights (none without a model)."""
        return kernel_ids(self.model) if self.model is not None else set()

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter whose ``.grad`` a step may write: the model's, or shared and heads."""
        return list(self.model.parameters()) if self.model is not None else self.shared + self.heads

    def zero_grad(self) -> None:
        """Clear ``.grad`` of every parameter of :meth:`parameters`."""
        for p in self.parameters():
            p.grad = None

    def overflowed(self, J: Tensor) -> bool:
        """With a gradient scaler: whether the per-task gradients ``J`` overflowed (on any rank),
        in which case every ``.grad`` is left holding an inf for the scaler to skip the step."""
        if self.precision.scaler is None:
            return False
        bad = not bool(torch.isfinite(J).all())
        if self.comm.active:
            bad = self.comm.any(bad, J.device)
        if bad:
            mark_overflow(self.shared + self.heads)
        return bad

    def check(self, vec: Tensor, step: int) -> None:
        """Refuse a non-finite update: every ``.grad`` is cleared, so an optimizer step does nothing.
        Across processes every rank refuses when any rank's part is non-finite (call it on every rank)."""
        bad = not bool(torch.isfinite(vec).all())
        if self.comm.active:
            bad = self.comm.any(bad, vec.device)
        if bad:
            self.zero_grad()
            raise NonFiniteGradientError(
                f"method {type(self.method).__name__} gave a non-finite update at step {step}; "
                "the step was not applied (try a lower --lr)"
            )


class Strategy(ABC):
    """One gradient source's way from a forward pass to ``.grad``."""

    #: the ``--grad-mode`` this strategy implements
    mode: ClassVar[str]
    #: the shared layer whose gradient norms the method receives (loss mode only)
    norm_layer_name: str | None = None
    #: the task coefficients c of the last computed step, when the update is c(G) @ J
    coefficients: Tensor | None = None

    def __init__(self, ctx: Context, recompute_every: int = 1) -> None:
        self.ctx = ctx
        self.recompute_every = recompute_every

    def splits_forward(self, step: int) -> bool:
        """Whether step ``step``'s forward should stop at the shared representation (``encode``,
        then ``decode`` of a detached copy), so that its gradient can be taken alone."""
        return False

    @abstractmethod
    def backward(self, fwd: Forward, extra: Sequence[Tensor] | None, step: int) -> StepResult:
        """Write the update of ``fwd`` into ``.grad``; ``extra`` as in :meth:`Engine.backward`."""

    def state_dict(self) -> dict[str, Any]:
        return {"coefficients": self.coefficients}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # "engine_coefficients": checkpoints written before the engine had a state_dict
        self.coefficients = state.get("coefficients", state.get("engine_coefficients"))


def _identity(losses: Tensor) -> Tensor:
    return losses


class GradientStrategy(Strategy):
    """Per-task gradients of the transformed losses, balanced by an aggregator.

    With ``recompute_every = k > 1`` (a method whose update is c(G) @ J) the coefficients c are
    computed every k steps and in between the update is one backward of Σ_t c_t L_t.
    """

    def __init__(self, ctx: Context, recompute_every: int = 1) -> None:
        super().__init__(ctx, recompute_every)
        self.from_gramian = ctx.method.requirements.from_gramian
        self.transform = ctx.method.requirements.loss_transform or _identity

    def reusing(self, step: int) -> bool:
        """Whether step ``step`` reuses the last coefficients instead of computing new ones."""
        return self.recompute_every > 1 and self.coefficients is not None and bool(step % self.recompute_every)

    def backward(self, fwd: Forward, extra: Sequence[Tensor] | None, step: int) -> StepResult:
        parts = fwd.parts if extra is None else [p + e for p, e in zip(fwd.parts, extra, strict=True)]
        scale = self.ctx.precision.scale  # fp16's loss scale S (1 otherwise), divided out again below
        objective = [self.transform(p.reshape(1)).reshape(()) * scale for p in parts]
        if self.reusing(step):
            assert self.coefficients is not None
            (self.coefficients * torch.stack(objective)).sum().backward()
            self.ctx.comm.reduce_grads(self.ctx.shared + self.ctx.heads)
            return StepResult(fwd.losses.detach(), self.coefficients.detach().clone())
        return self.compute(fwd, objective, step)

    @abstractmethod
    def compute(self, fwd: Forward, objective: list[Tensor], step: int) -> StepResult:
        """A step that computes the method's update from this batch's gradients."""

    def combine(self, J: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(The update vector, into ``out`` when given and the update is c(G) @ J; the coefficients c
        in that case; the weights w_t of the task-specific gradients, c or the method's
        ``row_weights``, None for 1)."""
        if self.from_gramian:
            method = cast(GramianWeighting, self.ctx.method)
            G = gramian(J)
            c = guarded(method, "weights_from_gramian(G)", lambda: method.weights_from_gramian(G))
            check_vector(method, "weights_from_gramian(G)", c, J.shape[0], G)  # a user's method: one line
            c = c.to(J)
            return (torch.mv(J.T, c, out=out) if out is not None else c @ J), c, c
        aggregator = cast(Aggregator, self.ctx.method)
        vec = guarded(aggregator, "aggregate(J)", lambda: aggregator(J))
        check_vector(aggregator, "aggregate(J)", vec, J.shape[1], J)
        return vec, None, self.row_weights(J)

    def row_weights(self, like: Tensor) -> Tensor | None:
        w = cast(Aggregator, self.ctx.method).row_weights()
        return None if w is None else w.to(like)

    def skipped(self, losses: Tensor) -> StepResult:
        """The result of a step whose scaled gradients overflowed (weights 1: nothing was combined)."""
        return StepResult(losses.detach(), torch.ones_like(losses).detach(), overflow=True)

    def result(self, losses: Tensor, c: Tensor | None, w: Tensor | None) -> StepResult:
        """Record c and report w (the task weights used; 1 where the method has none)."""
        self.coefficients = c
        weights = w if w is not None else torch.ones(len(self.ctx.tasks))
        return StepResult(losses.detach(), weights.detach())

    def unshared(self, losses: Tensor, objective: list[Tensor], step: int) -> StepResult:
        """No shared parameter: nothing to balance, each task's parameters get its own gradient."""
        total = torch.stack(objective).sum()
        if self.ctx.comm.active or not torch.isfinite(total):
            self.ctx.check(total.detach().reshape(1), step)
        total.backward()
        self.ctx.comm.reduce_grads(self.ctx.heads)
        return StepResult(losses.detach(), torch.ones_like(losses).detach())
