"""One training step's backward pass: losses -> balancing method -> ``.grad`` of every parameter.

Modes, cheapest first:
- ``loss``: loss weightings; one backward of the combined scalar.
- ``representation``: per-task gradients with respect to the shared representation (heads
  only), aggregated there, then one backward through the encoder (the MGDA-UB idea).
- ``parameters``: the Jacobian J (T x P) of the shared parameters by T backward passes into one
  preallocated buffer; the method's vector is written into ``.grad``.
With ``recompute_every=k`` a method whose update is sum_t c_t g_t (a ``GramianWeighting``)
computes J and c every k steps and in between takes one backward of sum_t c_t L_t.
Task-specific parameters always get their own task's gradient, times c_t where the method
defines task weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from densemtl.balancing.base import Aggregator, BalancingMethod, GramianWeighting, LossWeighting
from densemtl.engine.buffers import JacobianBuffer
from densemtl.errors import ConfigError, DenseMTLError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import compute_losses

MODES = ("loss", "representation", "parameters")


class NonFiniteGradientError(DenseMTLError):
    """The combined update contains NaN or inf: the step is refused, not applied."""


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

    # -- pieces -----------------------------------------------------------------------------------
    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        losses = compute_losses(preds, batch, self.tasks)
        for task, extra in self.model.extra_losses(preds, batch).items():
            losses[task] = losses[task] + extra
        return torch.stack([losses[t] for t in self.tasks])

    def _combine(self, J: Tensor) -> tuple[Tensor, Tensor | None]:
        """The update vector and, for Gramian weightings, the task coefficients c."""
        assert isinstance(self.method, Aggregator)
        if isinstance(self.method, GramianWeighting):
            c = self.method.weights_from_gramian(J @ J.T).to(J)
            return c @ J, c
        return self.method(J), None

    def _check(self, vec: Tensor) -> None:
        if not torch.isfinite(vec).all():
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
        self.model.zero_grad(set_to_none=True)
        if self.mode == "loss":
            result = self._loss_step(batch)
        elif (
            self.recompute_every > 1
            and self.coefficients is not None
            and self.step_count % self.recompute_every
        ):
            result = self._amortised_step(batch)
        elif self.mode == "representation":
            result = self._representation_step(batch)
        else:
            result = self._parameters_step(batch)
        self.step_count += 1
        return result

    def _loss_step(self, batch: dict[str, Tensor]) -> StepResult:
        assert isinstance(self.method, LossWeighting)
        losses = self.task_losses(self.model(batch["image"]), batch)
        scalar, weights = self.method.combine(losses)
        if not torch.isfinite(scalar):
            self._check(scalar.detach().reshape(1))
        scalar.backward()
        return StepResult(losses.detach(), weights.detach())

    def _amortised_step(self, batch: dict[str, Tensor]) -> StepResult:
        assert self.coefficients is not None
        losses = self.task_losses(self.model(batch["image"]), batch)
        objective = self.method.loss_transform(losses)  # type: ignore[attr-defined]
        (self.coefficients * objective).sum().backward()
        return StepResult(losses.detach(), self.coefficients.detach().clone())

    def _parameters_step(self, batch: dict[str, Tensor]) -> StepResult:
        losses = self.task_losses(self.model(batch["image"]), batch)
        objective = self.method.loss_transform(losses)  # type: ignore[attr-defined]
        T = len(self.tasks)
        if self._jac is None:
            self._jac = JacobianBuffer(self._shared, T)
        n_shared = len(self._shared)
        head_grads = []
        for t in range(T):
            grads = torch.autograd.grad(
                objective[t], self._shared + self._own[t], retain_graph=t < T - 1, allow_unused=True
            )
            self._jac.write_row(t, grads[:n_shared])
            head_grads.append(grads[n_shared:])
        vec, c = self._combine(self._jac.matrix)
        self._check(vec)
        self._jac.set_grads(vec)
        for t in range(T):
            self._set_head_grads(t, head_grads[t], float(c[t]) if c is not None else 1.0)
        self.coefficients = c
        weights = c if c is not None else torch.ones(T)
        return StepResult(losses.detach(), weights.detach())

    def _representation_step(self, batch: dict[str, Tensor]) -> StepResult:
        x = batch["image"]
        rep = self.model.encode(x)
        rep_in = rep.detach().requires_grad_(True)
        preds = self.model.decode(rep_in, (x.shape[-2], x.shape[-1]))
        losses = self.task_losses(preds, batch)
        objective = self.method.loss_transform(losses)  # type: ignore[attr-defined]
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
        self.coefficients = c
        weights = c if c is not None else torch.ones(T)
        return StepResult(losses.detach(), weights.detach())
