"""Random loss weighting (RLW): fresh random task weights at every step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import LossWeighting, Requirements
from densemtl.errors import ConfigError

_DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


@register("rlw")
class RandomLossWeighting(LossWeighting):
    r"""w = T softmax(z) with z ~ N(0, I_T) drawn anew at every step.

    Lin, Ye, Zhang and Tsang, "Reasonable effectiveness of random weighting: a litmus test for
    multi-task learning", TMLR 2022, https://arxiv.org/abs/2111.10603.

    The paper samples lambda = softmax(z) (weights summing to 1); we multiply by T so that the
    loss has the scale of equal weighting (weights summing to T), which only rescales the
    learning rate. ``distribution`` picks how the weights are sampled, among those of the paper:
    "normal" (z ~ N(0, I), the paper's default), "uniform" (z ~ U(0, 1)^T) or "dirichlet"
    (lambda ~ Dir(1, ..., 1) directly, without the softmax).

    The random numbers come from ``self.generator`` (``set_generator``), so a seeded generator
    gives the same weights; if none is given a private ``torch.Generator`` seeded with 0 is used,
    and its state is then part of ``state_dict``.
    """

    requirements = Requirements(sources=("losses",), weighted_sum=True, weights_from_losses=False)

    def __init__(self, num_tasks: int | None = None, distribution: str = "normal") -> None:
        super().__init__()
        if distribution not in _DISTRIBUTIONS:
            raise ConfigError(f"rlw: distribution must be one of {', '.join(_DISTRIBUTIONS)}, got {distribution!r}")
        self.num_tasks = num_tasks
        self.distribution = distribution
        self._owns_generator = False

    def set_generator(self, generator: torch.Generator) -> None:
        super().set_generator(generator)
        self._owns_generator = False

    def rng(self) -> torch.Generator:
        if self.generator is None:
            self._owns_generator = True  # the default generator is ours to save
        return super().rng()

    def sample(self, num_tasks: int) -> Tensor:
        """One draw of the T weights (summing to T), on the generator's device."""
        g = self.rng()
        if self.distribution == "normal":
            lam = torch.softmax(torch.randn(num_tasks, generator=g, device=g.device), dim=0)
        elif self.distribution == "uniform":
            lam = torch.softmax(torch.rand(num_tasks, generator=g, device=g.device), dim=0)
        else:
            # Dir(1) is normalised i.i.d. Exp(1) draws; -log(1 - U) keeps the argument in (0, 1].
            e = -torch.log1p(-torch.rand(num_tasks, generator=g, device=g.device, dtype=torch.float64))
            lam = (e / e.sum()).float()
        return num_tasks * lam

    def weights(self, losses: Tensor) -> Tensor:
        if losses.dim() != 1:
            raise ValueError(f"RLW expects a 1-D tensor of task losses, got shape {tuple(losses.shape)}")
        if self.num_tasks is None:
            self.num_tasks = losses.numel()
        elif losses.numel() != self.num_tasks:
            raise ValueError(f"RLW was built for {self.num_tasks} tasks but got {losses.numel()} losses")
        return self.sample(losses.numel()).to(losses)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"num_tasks": self.num_tasks}
        # A generator given by the trainer is the trainer's to save; only our own default is ours.
        if self._owns_generator and self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_tasks = state.get("num_tasks", self.num_tasks)
        if "generator" in state and (self.generator is None or self._owns_generator):
            self.rng().set_state(state["generator"])

    def __repr__(self) -> str:
        return f"RandomLossWeighting(distribution={self.distribution!r})"
