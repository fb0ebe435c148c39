"""Smooth Tchebycheff scalarization (STCH): a smooth maximum of the normalised task losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import LossWeighting
from densemtl.errors import ConfigError


@register("stch", tiny={"warmup_epoch": 1})  # leaves the warm-up within a tiny run
class SmoothTchebycheff(LossWeighting):
    r"""L = T mu log sum_t exp(x_t / mu), x_t = log(L_t / r_t), after a warm-up on sum_t log L_t.

    Lin, Zhang, Yang, Liu, Wang and Zhang, "Smooth Tchebycheff scalarization for multi-objective
    optimization", ICML 2024, https://arxiv.org/abs/2402.19078.

    The paper's scalarisation is mu log sum_t exp(lambda_t (f_t - z_t) / mu), a smooth
    approximation of max_t lambda_t (f_t - z_t) which it becomes as mu -> 0. For multi-task
    learning the authors' code (STCH_MTL) applies it with uniform preference to the log-losses
    normalised by a reference point r, scaled by T; we follow that recipe:

    - epochs 0 .. ``warmup_epoch`` (0-based): warm-up on sum_t log L_t (effective weights 1/L_t);
    - r is the mean task losses of epoch ``warmup_epoch``, as received by ``end_epoch``;
    - afterwards: T mu logsumexp(x / mu), with effective weights
      dL/dL_t = T softmax(x / mu)_t / L_t, i.e. the task furthest above its reference gets the
      most weight, all of it as mu -> 0.

    With ``log_losses=False`` the losses are used as they are: the warm-up is equal weighting and
    x_t = L_t / r_t - 1 (the paper's lambda_t (f_t - z_t) with z = r and lambda_t = 1 / r_t), so the
    effective weights are T softmax(x / mu)_t / r_t. ``eps`` keeps the logarithms finite.
    The reported weights are the effective weights dL/dL_t.
    """

    def __init__(
        self,
        num_tasks: int | None = None,
        mu: float = 1.0,
        warmup_epoch: int = 4,
        log_losses: bool = True,
        eps: float = 1e-20,
    ) -> None:
        super().__init__()
        if mu <= 0:
            raise ConfigError(f"stch: mu must be > 0, got {mu}")
        if warmup_epoch < 0:
            raise ConfigError(f"stch: warmup_epoch must be >= 0, got {warmup_epoch}")
        self.num_tasks = num_tasks
        self.mu = float(mu)
        self.warmup_epoch = int(warmup_epoch)
        self.log_losses = bool(log_losses)
        self.eps = float(eps)
        self.epochs_done = 0
        self.reference: Tensor | None = None

    def _check(self, n: int) -> None:
        if self.num_tasks is None:
            self.num_tasks = n
        elif n != self.num_tasks:
            raise ValueError(f"STCH was built for {self.num_tasks} tasks but got {n} losses")

    @property
    def in_warmup(self) -> bool:
        return self.reference is None

    def end_epoch(self, epoch: int, mean_losses: Tensor) -> None:
        mean_losses = torch.as_tensor(mean_losses).detach().reshape(-1).to("cpu", torch.float32)
        self._check(mean_losses.numel())
        if self.epochs_done == self.warmup_epoch:
            self.reference = mean_losses.clone()
        self.epochs_done += 1

    def _objective(self, losses: Tensor) -> Tensor:
        if self.reference is None:
            return torch.log(losses + self.eps).sum() if self.log_losses else losses.sum()
        r = self.reference.to(losses)
        if self.log_losses:
            x = torch.log(losses + self.eps) - torch.log(r + self.eps)
        else:
            x = losses / (r + self.eps) - 1.0
        return losses.numel() * self.mu * torch.logsumexp(x / self.mu, dim=0)

    def weights(self, losses: Tensor) -> Tensor:
        """The effective weights dL/dL_t at these losses."""
        if losses.dim() != 1:
            raise ValueError(f"STCH expects a 1-D tensor of task losses, got shape {tuple(losses.shape)}")
        self._check(losses.numel())
        with torch.enable_grad():
            at = losses.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._objective(at), at)
        return grad

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights(losses)
        return self._objective(losses), w

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_tasks": self.num_tasks,
            "epochs_done": self.epochs_done,
            "reference": None if self.reference is None else self.reference.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_tasks = state.get("num_tasks", self.num_tasks)
        self.epochs_done = int(state["epochs_done"])
        ref = state.get("reference")
        self.reference = None if ref is None else torch.as_tensor(ref).to("cpu", torch.float32).clone()

    def __repr__(self) -> str:
        return f"SmoothTchebycheff(mu={self.mu}, warmup_epoch={self.warmup_epoch})"
