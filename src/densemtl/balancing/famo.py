"""FAMO: fast adaptive multitask optimization, balancing the rates at which the losses fall."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._adam import AdamMoments
from densemtl.balancing.base import LossWeighting, Requirements
from densemtl.errors import ConfigError

UPDATES = ("same_batch", "next_batch")


@register("famo")
class FAMO(LossWeighting):
    r"""Step along sum_t c z_t grad log(L_t - m_t), z = softmax(xi), 1/c = sum_t z_t / (L_t - m_t).

    Liu, Feng, Stone and Liu, "FAMO: fast adaptive multitask optimization", NeurIPS 2023,
    https://arxiv.org/abs/2306.03792 (Algorithm 1).

    The back-propagated scalar is sum_t c z_t log(L_t - m_t + eps) with c detached, so the
    effective weight of task t is w_t = c z_t / (L_t - m_t): the weights sum to 1 and are the
    ones reported. ``min_losses`` are the m_t (a lower bound of each loss, 0 by default).

    The logits xi (init 0) are learnt to equalise the log-loss decreases: with
    delta_t = log(L_t^before - m_t) - log(L_t^after - m_t), the gradient of xi is
    J_softmax(xi)^T delta, plus the decay ``gamma`` * xi, and the step is Adam's with learning
    rate ``w_lr`` (betas 0.9, 0.999), as in the authors' code. A task whose loss fell least gains
    weight. ``update`` says where L^after comes from:

    - "same_batch" (default; the paper, the authors' code and LibMTL): the same batch
      re-evaluated after the optimizer step, one extra forward pass without backward, which the
      engine runs (``Requirements.reevaluate``) and hands to ``observe_losses_after_step``;
    - "next_batch": the losses of the next call (the next batch), free but noisy: each
      ``combine`` first updates xi from the previous call's losses, then weighs the current ones.

    The logits and Adam's moments are internal (not in ``parameters()``) and are saved by
    ``state_dict``. The authors also clip the shared parameters' gradient norm to 1; that is the
    trainer's job.
    """

    def __init__(
        self,
        num_tasks: int | None = None,
        w_lr: float = 0.025,
        gamma: float = 1e-3,
        min_losses: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
        update: str = "same_batch",
    ) -> None:
        super().__init__()
        if w_lr <= 0:
            raise ConfigError(f"famo: w_lr must be > 0, got {w_lr}")
        if gamma < 0:
            raise ConfigError(f"famo: gamma must be >= 0, got {gamma}")
        if update not in UPDATES:
            raise ConfigError(f"famo: update must be one of {', '.join(UPDATES)}, got {update!r}")
        self.num_tasks = num_tasks
        self.w_lr = float(w_lr)
        self.gamma = float(gamma)
        self.min_losses = min_losses
        self.eps = float(eps)
        self.update = update
        self.requirements = Requirements(sources=("losses",), reevaluate=update == "same_batch")
        self.logits: Tensor | None = None
        self._adam: AdamMoments | None = None
        self._prev_losses: Tensor | None = None
        if num_tasks is not None:
            self._init_state(int(num_tasks), torch.device("cpu"))

    def _init_state(self, num_tasks: int, device: torch.device) -> None:
        if num_tasks < 1:
            raise ValueError(f"FAMO needs at least one task, got num_tasks={num_tasks}")
        self.num_tasks = num_tasks
        self.logits = torch.zeros(num_tasks, device=device)
        self._adam = AdamMoments(num_tasks, torch.float32, device)
        self._prev_losses = None

    def _state_for(self, losses: Tensor) -> None:
        if losses.dim() != 1:
            raise ValueError(f"FAMO expects a 1-D tensor of task losses, got shape {tuple(losses.shape)}")
        if self.logits is None:
            self._init_state(losses.numel(), losses.device)
        if losses.numel() != self.num_tasks:
            raise ValueError(f"FAMO was built for {self.num_tasks} tasks but got {losses.numel()} losses")
        assert self.logits is not None and self._adam is not None
        if self.logits.device != losses.device:
            self.logits = self.logits.to(losses.device)
            self._adam.to(losses.device)
            if self._prev_losses is not None:
                self._prev_losses = self._prev_losses.to(losses.device)

    def _min(self, like: Tensor) -> Tensor:
        m = torch.as_tensor(self.min_losses, dtype=like.dtype, device=like.device)
        if m.dim() > 0 and m.numel() != like.numel():
            raise ConfigError(f"famo: min_losses has {m.numel()} values for {like.numel()} tasks")
        return m

    @property
    def task_weights(self) -> Tensor | None:
        """The task weights learnt so far: the softmax of the logits, z (None before the first call)."""
        return None if self.logits is None else torch.softmax(self.logits, dim=0)

    def _update_logits(self, losses: Tensor) -> None:
        """One Adam step of the logits from the losses before (``_prev_losses``) and after."""
        assert self.logits is not None and self._adam is not None
        prev = self._prev_losses
        if prev is None:
            return
        m = self._min(losses)
        delta = torch.log(prev - m + self.eps) - torch.log(losses - m + self.eps)
        z = torch.softmax(self.logits, dim=0)
        # J_softmax^T delta = z * (delta - <z, delta>), written out to avoid an autograd call.
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        denom, bias1 = self._adam.step(grad)
        self.logits.addcdiv_(self._adam.exp_avg, denom, value=-self.w_lr / bias1)

    def weights(self, losses: Tensor) -> Tensor:
        """The effective weights c z_t / (L_t - m_t) for the current logits (no update)."""
        self._state_for(losses)
        assert self.logits is not None
        z = torch.softmax(self.logits, dim=0).to(losses)
        gap = losses - self._min(losses) + self.eps
        return z / gap / (z / gap).sum()

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        self._state_for(losses)
        current = losses.detach().float()
        if self.update == "next_batch":
            self._update_logits(current)
        self._prev_losses = current.clone()
        assert self.logits is not None
        z = torch.softmax(self.logits, dim=0).to(losses)
        m = self._min(losses)
        c = 1.0 / (z / (current.to(losses) - m + self.eps)).sum()
        scalar = (c * z * torch.log(losses - m + self.eps)).sum()
        return scalar, self.weights(losses.detach())

    def observe_losses_after_step(self, losses: Tensor) -> None:
        """The same batch's losses after the step ("same_batch"): one logit update, from the
        losses the last ``combine`` weighed to these."""
        if self.update != "same_batch" or self.logits is None:
            return
        losses = torch.as_tensor(losses).detach().reshape(-1)
        self._state_for(losses)
        self._update_logits(losses.float())
        self._prev_losses = None  # one update per step, even if called twice

    def state_dict(self) -> dict[str, Any]:
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        none: dict[str, Any] = {"exp_avg": None, "exp_avg_sq": None, "adam_steps": 0}
        adam = self._adam.state_dict() if self._adam is not None else none
        return {"num_tasks": self.num_tasks, "logits": cpu(self.logits), **adam, "prev_losses": cpu(self._prev_losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("logits") is None:
            return
        device = self.logits.device if self.logits is not None else torch.device("cpu")
        self._init_state(int(state["num_tasks"]), device)
        assert self._adam is not None
        self.logits = torch.as_tensor(state["logits"]).to(device, torch.float32).clone()
        self._adam.load_state_dict(state)
        prev = state.get("prev_losses")
        self._prev_losses = None if prev is None else torch.as_tensor(prev).to(device, torch.float32).clone()

    def __repr__(self) -> str:
        return f"FAMO(w_lr={self.w_lr}, gamma={self.gamma}, update={self.update!r})"
