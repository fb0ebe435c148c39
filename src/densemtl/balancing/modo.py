"""MoDo: multi-objective gradient with a projected-gradient step on the task weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import GramianWeighting


def project_onto_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of a vector onto {x : x >= 0, sum x = 1} (sort-based, float64 inside)."""
    x = v.detach().double()
    if not bool(torch.isfinite(x).all()):
        # A non-finite step carries no direction we can trust: keep the mass where it is largest.
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
        x = (x == x.max()).double()
    u, _ = torch.sort(x, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    k = torch.arange(1, x.numel() + 1, dtype=x.dtype, device=x.device)
    support = torch.nonzero(u - css / k > 0)
    # At huge scales u_1 - (u_1 - 1) rounds to 0; the projection is then the largest vertex.
    rho = int(support.max()) if support.numel() else 0
    theta = css[rho] / (rho + 1)
    return (x - theta).clamp_min(0.0).to(v.dtype)


@register("modo")
class MoDo(GramianWeighting):
    r"""MoDo: multi-objective gradient with double sampling.

    Chen, Fernando, Ying and Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance", NeurIPS 2023 (JMLR 2024),
    https://arxiv.org/abs/2305.20057.

    The task weights lambda (start uniform) take one projected-gradient step on
    min_{lambda in simplex} 1/2 ||Jᵀ lambda||² + rho/2 ||lambda||² per call, and the update is
    Jᵀ lambda with the new weights:

        lambda <- Pi_simplex(lambda - gamma (G lambda + rho lambda)),   out = Jᵀ lambda.

    The paper estimates G lambda with two independent batches (J_1 J_2ᵀ lambda, "double
    sampling") so that it is unbiased, and updates the model with a third; with one batch per
    step we use the same J for all three (G = J Jᵀ), which biases the lambda step but keeps the
    cost of one Jacobian. Defaults gamma=1e-3, rho=0.1 are LibMTL's (from the authors' code).
    The step is not scale invariant: like the paper, lambda moves by gamma times G.
    """

    def __init__(self, gamma: float = 1e-3, rho: float = 0.1) -> None:
        super().__init__()
        if gamma <= 0 or rho < 0:
            raise ValueError(f"MoDo needs gamma > 0 and rho >= 0, got gamma={gamma}, rho={rho}")
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.lambd: Tensor | None = None

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        G64 = G.detach().double()
        lambd = self.lambd
        if lambd is None or lambd.numel() != T:
            lambd = torch.full((T,), 1.0 / T, dtype=torch.float64)
        lambd = lambd.to(G.device)
        lambd = project_onto_simplex(lambd - self.gamma * (G64 @ lambd + self.rho * lambd))
        self.lambd = lambd.cpu()
        return lambd.to(G.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"lambd": None if self.lambd is None else self.lambd.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lambd = state.get("lambd")
        self.lambd = None if lambd is None else torch.as_tensor(lambd, dtype=torch.float64).cpu().clone()

    def __repr__(self) -> str:
        return f"MoDo(gamma={self.gamma}, rho={self.rho})"
