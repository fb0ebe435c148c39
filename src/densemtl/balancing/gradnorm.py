"""GradNorm: learn the task weights so that the tasks' gradient norms train at a common rate."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._adam import AdamMoments
from densemtl.balancing.base import LossWeighting, Requirements
from densemtl.errors import ConfigError

# Weights are kept strictly positive: G_t = w_t ‖∇_W L_t‖ and the closed-form gradient below
# both assume w_t > 0, and a task with weight 0 could never come back.
_MIN_WEIGHT = 1e-6


@register("gradnorm")
class GradNorm(LossWeighting):
    r"""L = Σ_t w_t L_t with weights w learnt by the GradNorm loss (Algorithm 1 of the paper).

    Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization for Adaptive
    Loss Balancing in Deep Multitask Networks", ICML 2018, https://arxiv.org/abs/1711.02257.

    The weights start at 1. At each step, for one shared layer W (``Requirements.layer_grad_norms``:
    the parameter of ``model.named_shared_parameters()`` that ``layer`` names, or, by default, the
    last shared weight to run, which the engine finds):

        G_t = ‖∇_W w_t L_t‖ = w_t ‖∇_W L_t‖,   Ḡ = mean_t G_t,
        L̃_t = L_t / L_t(0),   r_t = L̃_t / mean_s L̃_s,
        L_grad = Σ_t |G_t − Ḡ r_t^α|,

    with the target Ḡ r_t^α held constant, as in the paper. Since G_t is linear in w_t, the
    gradient is closed-form, ∂L_grad/∂w_t = sign(G_t − Ḡ r_t^α) ‖∇_W L_t‖; w takes an Adam step
    (betas 0.9, 0.999) of learning rate ``lr`` along it, then

        w ← T w / Σ_s w_s   (weights kept > 0),

    all after the model's gradient ∇ Σ_t w_t L_t was formed with the weights of this step, as in
    the paper's algorithm. A task that trains too fast (small r_t) or whose gradient is too large
    loses weight; α (1.5, the paper's NYUv2 value and LibMTL's default) sets how strongly rates
    are pulled together. L_t(0) is the first step's loss, as in the paper (LibMTL uses the first
    epoch's mean and starts GradNorm at the second epoch).

    The paper trains w with the model's optimizer and gives no separate learning rate; LibMTL
    does the same (Adam, the model's learning rate) on a softmax parametrisation. We keep w's
    step independent of the model's optimizer: Adam because ‖∇_W L_t‖ has whatever scale the
    layer gives it (a plain gradient step of a fixed size would be too small on one network and
    throw the weights to 0 on another), and ``lr`` = 0.025 by default, so that the first steps
    move each weight by about 2.5% (our choice, the weight learning rate of FAMO's authors; not
    from the GradNorm paper). The engine provides ‖∇_W L_t‖ through ``observe_grad_norms``;
    without it (a model with no shared weight) the weights stay at 1.
    """

    def __init__(
        self,
        num_tasks: int | None = None,
        alpha: float = 1.5,
        lr: float = 0.025,
        layer: str | None = None,
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ConfigError(f"gradnorm: alpha must be >= 0, got {alpha}")
        if not lr > 0:
            raise ConfigError(f"gradnorm: lr must be > 0, got {lr}")
        if layer is not None and not isinstance(layer, str):
            raise ConfigError(f"gradnorm: layer must be a parameter name, got {layer!r}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.layer = layer
        # combine's scalar is Σ w_t L_t with the w it returns: the engine may split the update
        self.requirements = Requirements(sources=("losses",), layer_grad_norms=layer or "auto", weighted_sum=True)
        self.num_tasks = num_tasks
        self._weights: Tensor | None = None
        self.initial_losses: Tensor | None = None
        self._adam: AdamMoments | None = None
        self._norms: Tensor | None = None
        if num_tasks is not None:
            self._init_state(int(num_tasks))

    @property
    def task_weights(self) -> Tensor | None:
        """The task weights learnt so far: w (T,), summing to T (None before the first call)."""
        return self._weights

    def parameters(self) -> list[torch.nn.Parameter]:
        # The weights follow their own closed-form step, not the trainer's optimizer.
        return []

    def _init_state(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"GradNorm needs at least one task, got num_tasks={num_tasks}")
        self.num_tasks = num_tasks
        self._weights = torch.ones(num_tasks, dtype=torch.float64)
        self._adam = AdamMoments(num_tasks, torch.float64)

    def _check(self, values: Tensor, what: str) -> None:
        if values.dim() != 1:
            raise ValueError(f"GradNorm expects a 1-D tensor of {what}, got shape {tuple(values.shape)}")
        if self._weights is None:
            self._init_state(values.numel())
        if values.numel() != self.num_tasks:
            raise ValueError(f"GradNorm was built for {self.num_tasks} tasks but got {values.numel()} {what}")

    def observe_grad_norms(self, norms: Tensor) -> None:
        """‖∇_W L_t‖ (T,) of this step's unweighted losses; used by the next ``combine``."""
        norms = torch.as_tensor(norms).detach().reshape(-1)
        self._check(norms, "gradient norms")
        self._norms = norms.to("cpu", torch.float64)

    def weights(self, losses: Tensor) -> Tensor:
        self._check(losses, "losses")
        assert self._weights is not None
        return self._weights.to(losses)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights(losses.detach())
        scalar = (w * losses).sum()
        if self._norms is not None:
            self._update(losses.detach().to("cpu", torch.float64), self._norms)
            self._norms = None
        return scalar, w.detach().clone()

    def _update(self, losses: Tensor, norms: Tensor) -> None:
        assert self._weights is not None
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        initial = self.initial_losses
        # A task whose first loss was 0 (or not finite) has no training rate: it counts as on pace.
        ok = (initial > 0) & torch.isfinite(initial) & torch.isfinite(losses)
        ratio = torch.where(ok, losses / torch.where(ok, initial, 1.0), 1.0)
        mean = ratio.mean()
        rate = ratio / mean if mean > 0 else torch.ones_like(ratio)
        norms = torch.nan_to_num(norms, nan=0.0, posinf=0.0)
        w = self._weights
        G = w * norms
        target = G.mean() * rate.clamp_min(0.0) ** self.alpha
        grad = torch.sign(G - target) * norms
        assert self._adam is not None
        denom, bias1 = self._adam.step(grad)
        w = (w - (self.lr / bias1) * self._adam.exp_avg / denom).clamp_min(_MIN_WEIGHT)
        self._weights = w * (w.numel() / w.sum())

    def state_dict(self) -> dict[str, Any]:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        none: dict[str, Any] = {"exp_avg": None, "exp_avg_sq": None, "adam_steps": 0}
        return {
            "num_tasks": self.num_tasks,
            "weights": copy(self._weights),
            "initial_losses": copy(self.initial_losses),
            **(self._adam.state_dict() if self._adam is not None else none),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights, initial = state.get("weights"), state.get("initial_losses")
        if weights is None:
            return
        self._init_state(int(state["num_tasks"]))
        self._weights = torch.as_tensor(weights, dtype=torch.float64).clone()
        self.initial_losses = None if initial is None else torch.as_tensor(initial, dtype=torch.float64).clone()
        assert self._adam is not None
        self._adam.load_state_dict(state)
        self._norms = None

    def __repr__(self) -> str:
        return f"GradNorm(alpha={self.alpha}, lr={self.lr}, layer={self.layer!r})"
