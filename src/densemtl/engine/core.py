"""One training step's backward pass: losses -> balancing method -> ``.grad`` of every parameter.

Modes, cheapest first:
- ``loss``: loss weightings; one backward of the combined scalar.
- ``representation``: per-task gradients with respect to the shared representation (heads
  only), aggregated there, then one backward through the encoder (the MGDA-UB idea).
- ``gramian``: for methods of the form c(G) @ J, G = J Jᵀ from one vectorised backward pass,
  parameter by parameter, without assembling J (:mod:`densemtl.engine.gramian`).
- ``parameters``: the Jacobian J (T x P) of the shared parameters by T backward passes into one
  preallocated buffer; the method's vector is written into ``.grad``.
With ``recompute_every=k`` a method whose update is sum_t c_t g_t (a ``GramianWeighting``)
computes J and c every k steps and in between takes one backward of sum_t c_t L_t.
Task-specific parameters always get their own task's gradient, times c_t where the method
defines task weights. A model without shared parameters (``single``) has nothing to balance:
every task then gets its own gradient of the (transformed) loss, with weight 1.

A loss weighting that sets ``needs_layer_grad_norms`` (GradNorm) is given ‖∇_W L_t‖ for one
shared layer W before each ``combine``: the parameter its ``layer`` attribute names, else the
last shared weight matrix or kernel in computation order (found in the first step's graph);
see :mod:`densemtl.engine.layer_norms` for how the T norms cost little more than an EW step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from densemtl.balancing.base import Aggregator, BalancingMethod, GramianWeighting, LossWeighting
from densemtl.engine.buffers import JacobianBuffer
from densemtl.engine.gramian import gramian, gramian_and_grads
from densemtl.engine.layer_norms import (
    head_passes,
    last_shared_kernel,
    layer_grad_norms,
    split_layer_norms,
    split_weighted_backward,
)
from densemtl.errors import ConfigError, DenseMTLError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import compute_losses

MODES = ("loss", "representation", "gramian", "parameters")


class NonFiniteGradientError(DenseMTLError):
    """The combined update contains NaN or inf: the step is refused, not applied."""


@dataclass
class Forward:
    """One forward pass: predictions, each task's loss (``parts``, T scalars), and in representation
    mode the shared representation (``rep``) and its detached, grad-requiring copy the heads read
    (``rep_in``).

    Per-task gradients are taken of ``parts[t]``, never of ``losses[t]``: indexing the stacked
    vector would send zero cotangents back through every other task's head.
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


def default_mode(method: BalancingMethod, model: MultiTaskModel) -> str:
    if isinstance(method, LossWeighting):
        return "loss"
    if method.supports_representation and model.has_representation:
        return "representation"
    return "parameters"


def check_mode(method: BalancingMethod, model: MultiTaskModel, mode: str | None) -> str:
    """The mode to use: the method's default, or the one asked for if the method can use it."""
    name = type(method).__name__
    if mode is None:
        return default_mode(method, model)
    if mode not in MODES:
        raise ConfigError(f"--grad-mode {mode!r} is not a mode; valid: {', '.join(MODES)}")
    if isinstance(method, LossWeighting) and mode != "loss":
        raise ConfigError(f"--grad-mode {mode}: {name} is a loss weighting and uses mode 'loss'")
    if not isinstance(method, LossWeighting) and mode == "loss":
        raise ConfigError(
            f"--grad-mode loss: {name} needs per-task gradients; use representation or parameters"
        )
    if mode == "representation" and not method.allows_representation:
        raise ConfigError(
            f"--grad-mode representation: {name} keeps state for each shared parameter across steps "
            "and runs in parameters mode only"
        )
    if mode == "gramian" and not isinstance(method, GramianWeighting):
        raise ConfigError(
            f"--grad-mode gramian: {name} needs the per-task gradients themselves, not only their "
            "Gramian; use parameters (or representation)"
        )
    if mode == "representation" and not model.has_representation:
        raise ConfigError(
            f"--grad-mode representation: {type(model).__name__} has no single shared representation"
        )
    return mode


class Engine:
    """Computes the update of one batch for ``model`` under ``method`` and writes it into ``.grad``."""

    def __init__(
        self,
        model: MultiTaskModel,
        method: BalancingMethod,
        tasks: tuple[str, ...],
        *,
        mode: str | None = None,
        recompute_every: int = 1,
    ) -> None:
        self.model = model
        self.method = method
        self.tasks = tasks
        self.mode = check_mode(method, model, mode)
        if recompute_every < 1:
            raise ConfigError(f"--recompute-every must be >= 1, got {recompute_every}")
        if recompute_every > 1 and not isinstance(method, GramianWeighting):
            raise ConfigError(
                f"--recompute-every {recompute_every}: {type(method).__name__} is not of the form "
                "sum_t c_t g_t with c from the Gramian, so its weights cannot be reused"
            )
        self.recompute_every = recompute_every
        self.step_count = 0
        self.coefficients: Tensor | None = None
        self._jac: JacobianBuffer | None = None
        self._shared = model.shared_parameters()
        self._own = [model.task_parameters(t) for t in tasks]
        self.norm_layer_name: str | None = None
        self._norm_layer: nn.Parameter | None = None
        self._norm_searched = False
        self._split_loss_mode = False
        if isinstance(method, LossWeighting) and method.needs_layer_grad_norms:
            self.norm_layer_name, self._norm_layer = self._pick_norm_layer()
            self._split_loss_mode = model.has_representation and bool(self._shared)

    def _pick_norm_layer(self) -> tuple[str | None, nn.Parameter | None]:
        """The layer the method's ``layer`` knob names (checked now); otherwise chosen at the first
        step, from the autograd graph (:func:`~densemtl.engine.layer_norms.last_shared_kernel`)."""
        wanted = getattr(self.method, "layer", None)
        if not wanted:
            return None, None
        named = list(self.model.named_shared_parameters())
        for name, p in named:
            if name == wanted:
                return name, p
        some = ", ".join([n for n, p in named if p.dim() >= 2][-5:]) or "none"
        raise ConfigError(
            f"{type(self.method).__name__} knob 'layer': {wanted!r} is not a shared parameter of "
            f"{type(self.model).__name__}; the last shared weights are: {some}"
        )

    # -- pieces -----------------------------------------------------------------------------------
    def task_loss_parts(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> list[Tensor]:
        """Each task's scalar loss (the model's extra losses included), in task order."""
        losses = compute_losses(preds, batch, self.tasks)
        for task, extra in self.model.extra_losses(preds, batch).items():
            losses[task] = losses[task] + extra
        return [losses[t] for t in self.tasks]

    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return torch.stack(self.task_loss_parts(preds, batch))

    def _combine(self, J: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The update vector (into ``out`` when given and the method is a Gramian weighting) and,
        for Gramian weightings, the task coefficients c."""
        assert isinstance(self.method, Aggregator)
        if isinstance(self.method, GramianWeighting):
            c = self.method.weights_from_gramian(gramian(J)).to(J)
            return (torch.mv(J.T, c, out=out) if out is not None else c @ J), c
        return self.method(J), None

    def _check(self, vec: Tensor) -> None:
        """Refuse a non-finite update: every ``.grad`` is cleared, so an optimizer step does nothing."""
        if not torch.isfinite(vec).all():
            self.model.zero_grad(set_to_none=True)
            raise NonFiniteGradientError(
                f"method {type(self.method).__name__} gave a non-finite update at step {self.step_count}; "
                "the step was not applied (try a lower --lr)"
            )

    def _set_head_grads(self, t: int, grads: tuple[Tensor | None, ...], scale: float) -> None:
        for p, g in zip(self._own[t], grads, strict=True):
            if g is not None:
                p.grad = g * scale if scale != 1.0 else g

    # -- steps ------------------------------------------------------------------------------------
    def step(self, batch: dict[str, Tensor]) -> StepResult:
        """Forward, losses, backward; leaves the update in ``.grad`` (zeroed first)."""
        return self.backward(self.forward(batch))

    def _amortising(self) -> bool:
        return self.recompute_every > 1 and self.coefficients is not None and bool(
            self.step_count % self.recompute_every
        )

    def forward(self, batch: dict[str, Tensor]) -> Forward:
        """The forward pass and the task losses, shaped for this engine's mode (grads zeroed)."""
        self.model.zero_grad(set_to_none=True)
        x = batch["image"]
        if (self.mode == "representation" and not self._amortising()) or self._split_loss_mode:
            rep = self.model.encode(x)
            rep_in = rep.detach().requires_grad_(True)
            preds = self.model.decode(rep_in, (x.shape[-2], x.shape[-1]))
            return Forward(preds, self.task_loss_parts(preds, batch), rep, rep_in)
        preds = self.model(x)
        return Forward(preds, self.task_loss_parts(preds, batch))

    def backward(self, fwd: Forward, extra: Sequence[Tensor] | None = None) -> StepResult:
        """Balance ``fwd``'s task losses into ``.grad``.

        ``extra`` (T scalars) are further per-task losses (MDML's mimicry): a loss weighting adds
        their sum to its combined loss unweighted; a gradient method sees L_t + extra_t as task t's
        loss. Pass a list rather than a stacked vector, for the reason given in :class:`Forward`.
        """
        if self.mode == "loss":
            result = self._loss_step(fwd, extra)
        else:
            parts = fwd.parts if extra is None else [p + e for p, e in zip(fwd.parts, extra, strict=True)]
            transform = self.method.loss_transform  # type: ignore[attr-defined]
            objective = [transform(p.reshape(1)).reshape(()) for p in parts]
            if self._amortising():
                result = self._amortised_step(fwd, objective)
            elif self.mode == "representation":
                result = self._representation_step(fwd, objective)
            elif self.mode == "gramian":
                result = self._gramian_step(fwd, objective)
            else:
                result = self._parameters_step(fwd, objective)
        self.step_count += 1
        return result

    def _loss_step(self, fwd: Forward, extra: Sequence[Tensor] | None) -> StepResult:
        """One backward of the method's combined loss; for GradNorm, the layer norms first (on a
        model with a shared representation, from per-task head passes that the update reuses:
        :mod:`densemtl.engine.layer_norms`)."""
        assert isinstance(self.method, LossWeighting)
        losses = fwd.losses
        rep, rep_in = fwd.rep, fwd.rep_in
        if self.method.needs_layer_grad_norms and self._norm_layer is None and not self._norm_searched:
            roots = [rep] if rep is not None else fwd.parts
            self.norm_layer_name, self._norm_layer = last_shared_kernel(self.model, roots)
            self._norm_searched = True
        pieces = None
        if self._norm_layer is not None:
            if rep is not None and rep_in is not None:
                pieces = head_passes(fwd.parts, rep_in, self._own)
                norms = split_layer_norms(rep, pieces[0], self._norm_layer)
            else:
                norms = layer_grad_norms(fwd.parts, self._norm_layer)
            self.method.observe_grad_norms(norms)
        scalar, weights = self.method.combine(losses)
        if extra is not None:
            scalar = scalar + torch.stack(list(extra)).sum()
        if not torch.isfinite(scalar):
            self._check(scalar.detach().reshape(1))
        weighted_sum = self.method.weighted_sum_combine or type(self.method).combine is LossWeighting.combine
        if pieces is not None and extra is None and weighted_sum:
            split_weighted_backward(rep, pieces[0], pieces[1], self._own, weights)  # type: ignore[arg-type]
        else:
            scalar.backward()
            if rep is not None and rep_in is not None:
                rep.backward(rep_in.grad if rep_in.grad is not None else torch.zeros_like(rep))
        return StepResult(losses.detach(), weights.detach())

    def _amortised_step(self, fwd: Forward, objective: list[Tensor]) -> StepResult:
        assert self.coefficients is not None
        (self.coefficients * torch.stack(objective)).sum().backward()
        return StepResult(fwd.losses.detach(), self.coefficients.detach().clone())

    def _parameters_step(self, fwd: Forward, objective: list[Tensor]) -> StepResult:
        """T backward passes; autograd accumulates task t's shared gradients straight into row t
        of the Jacobian buffer (each parameter's ``.grad`` is a view of it), so no gradient
        vector is allocated or copied, and task t's head gets its gradient in its ``.grad``.
        A method that ``streams_rows`` (MAO) takes each row as its pass finishes, and the
        buffer holds one row, reused."""
        T = len(self.tasks)
        if not self._shared:
            return self._unshared_step(fwd.losses, objective)
        method = self.method
        assert isinstance(method, Aggregator)
        stream = method.streams_rows
        if self._jac is None:
            self._jac = JacobianBuffer(self._shared, 1 if stream else T)
        if stream:
            method.start_rows(T, self._jac.matrix[0], out=self._jac.update)
        for t in range(T):
            self._jac.bind_row(0 if stream else t)
            torch.autograd.backward(objective[t], inputs=self._shared + self._own[t], retain_graph=t < T - 1)
            if stream:
                method.add_row(t, self._jac.matrix[0])
        vec, c = (method.finish_rows(), None) if stream else self._combine(self._jac.matrix, out=self._jac.update)
        self._check(vec)
        self._jac.set_grads(vec)
        for t in range(T):
            if c is not None and float(c[t]) != 1.0:
                for p in self._own[t]:
                    if p.grad is not None:
                        p.grad.mul_(float(c[t]))
        return self._result(fwd.losses, c)

    def _gramian_step(self, fwd: Forward, objective: list[Tensor]) -> StepResult:
        """G from one vectorised backward (:mod:`densemtl.engine.gramian`), then the heads."""
        assert isinstance(self.method, GramianWeighting)
        if not self._shared:
            return self._unshared_step(fwd.losses, objective)
        _, c, grads = gramian_and_grads(objective, self._shared, self.method.weights_from_gramian)
        present = [g for g in grads if g is not None]
        if present:
            self._check(torch.stack(torch._foreach_norm(present)))
        for p, g in zip(self._shared, grads, strict=True):
            p.grad = g
        heads = [p for own in self._own for p in own]
        if heads:
            torch.autograd.backward((c.detach() * torch.stack(objective)).sum(), inputs=heads)
        return self._result(fwd.losses, c)

    def _result(self, losses: Tensor, c: Tensor | None) -> StepResult:
        self.coefficients = c
        weights = c if c is not None else torch.ones(len(self.tasks))
        return StepResult(losses.detach(), weights.detach())

    def _unshared_step(self, losses: Tensor, objective: list[Tensor]) -> StepResult:
        """No shared parameter: nothing to balance, each task's parameters get its own gradient."""
        total = torch.stack(objective).sum()
        if not torch.isfinite(total):
            self._check(total.detach().reshape(1))
        total.backward()
        return StepResult(losses.detach(), torch.ones_like(losses).detach())

    def _representation_step(self, fwd: Forward, objective: list[Tensor]) -> StepResult:
        rep, rep_in = fwd.rep, fwd.rep_in
        assert rep is not None and rep_in is not None
        T = len(self.tasks)
        J = torch.empty(T, rep.numel(), dtype=rep.dtype, device=rep.device)
        head_grads = []
        for t in range(T):
            grads = torch.autograd.grad(
                objective[t], [rep_in, *self._own[t]], retain_graph=t < T - 1, allow_unused=True
            )
            J[t] = grads[0].reshape(-1) if grads[0] is not None else 0.0
            head_grads.append(grads[1:])
        vec, c = self._combine(J)
        self._check(vec)
        rep.backward(vec.view_as(rep))
        for t in range(T):
            self._set_head_grads(t, head_grads[t], float(c[t]) if c is not None else 1.0)
        return self._result(fwd.losses, c)
