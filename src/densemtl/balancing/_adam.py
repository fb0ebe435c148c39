"""Adam's moment estimates for the few variables a method trains itself (FAMO's logits, GradNorm's
weights), apart from the model's optimizer."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class AdamMoments:
    r"""m ← β1 m + (1 − β1) g,  v ← β2 v + (1 − β2) g²,  k ← k + 1 (β = 0.9, 0.999, ε = 1e-8).

    :meth:`step` folds in one gradient and returns the two numbers of Adam's update,
    ``denom`` = √v / √(1 − β2^k) + ε and ``bias1`` = 1 − β1^k, so that the caller's step is
    x ← x − lr · m / bias1 / denom (as ``torch.optim.Adam`` computes it). The moments are vectors
    of the variables' size, dtype and device; ``state_dict`` names them ``exp_avg``,
    ``exp_avg_sq`` and ``adam_steps``.
    """

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.exp_avg = torch.zeros(size, dtype=dtype, device=device)
        self.exp_avg_sq = torch.zeros(size, dtype=dtype, device=device)
        self.steps = 0

    def step(self, grad: Tensor) -> tuple[Tensor, float]:
        """Fold ``grad`` into the moments; (denom, bias1) of this step."""
        self.steps += 1
        k = self.steps
        self.exp_avg.mul_(BETA1).add_(grad, alpha=1 - BETA1)
        self.exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - BETA2**k)).add_(EPS)
        return denom, 1 - BETA1**k

    def to(self, device: torch.device) -> None:
        self.exp_avg, self.exp_avg_sq = self.exp_avg.to(device), self.exp_avg_sq.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "exp_avg": self.exp_avg.detach().cpu().clone(),
            "exp_avg_sq": self.exp_avg_sq.detach().cpu().clone(),
            "adam_steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the moments in this object's dtype and device."""
        like = self.exp_avg
        self.exp_avg = torch.as_tensor(state["exp_avg"]).to(like.device, like.dtype).clone()
        self.exp_avg_sq = torch.as_tensor(state["exp_avg_sq"]).to(like.device, like.dtype).clone()
        self.steps = int(state["adam_steps"])
