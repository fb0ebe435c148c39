"""MoCo: multi-objective gradient with tracked (bias-corrected) task gradients."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import Aggregator, Requirements
from densemtl.balancing.modo import project_onto_simplex


@register("moco")
class MoCo(Aggregator):
    r"""MoCo: MGDA on tracked gradients, with a projected-gradient step on the weights.

    Fernando, Shen, Liu, Chaudhury, Murugesan and Chen, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach", ICLR 2023,
    https://arxiv.org/abs/2210.12624.

    At call k = 1, 2, ... with step sizes beta_k = beta / k^beta_sigma and
    gamma_k = gamma / k^gamma_sigma, the tracked Jacobian Y (T x P) and the weights lambda
    (start uniform) are updated as

        Y <- Y - beta_k (Y - J),
        lambda <- Pi_simplex(lambda - gamma_k (Y Yᵀ + rho I) lambda),   out = Yᵀ lambda.

    Y is the state (as large as J). It starts at the first J (the paper leaves y_0 open; LibMTL
    starts from 0, which halves the first updates). Defaults are LibMTL's (from the authors' code):
    beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0. Unlike the paper, LibMTL
    replaces the simplex projection by a softmax and rescales each g_t to norm L_t; we follow
    the paper. The lambda step is not scale invariant (it moves by gamma_k times Y Yᵀ).

    Y follows each coordinate of J across steps, so MoCo runs in parameters mode only
    (``Requirements.coordinate_state``; LibMTL refuses representation gradients too): the
    representation's gradient belongs to one batch, and its size changes with the batch size,
    which would restart Y and the step count. Y and k are restarted if the shape of J changes
    (other tasks or parameters).
    """

    requirements = Requirements(sources=("jacobian",), coordinate_state=True)

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < beta <= 1 or gamma <= 0 or rho < 0 or beta_sigma < 0 or gamma_sigma < 0:
            raise ValueError(
                f"MoCo needs 0 < beta <= 1, gamma > 0, rho >= 0 and non-negative decays; got beta={beta}, "
                f"gamma={gamma}, rho={rho}, beta_sigma={beta_sigma}, gamma_sigma={gamma_sigma}"
            )
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.step = 0
        self.y: Tensor | None = None
        self.lambd: Tensor | None = None

    def aggregate(self, J: Tensor) -> Tensor:
        T = J.shape[0]
        J = J.detach()
        if self.y is None or self.y.shape != J.shape:
            self.step = 0
            self.y = J.clone()
            self.lambd = torch.full((T,), 1.0 / T, dtype=torch.float64)
        assert self.lambd is not None
        self.step += 1
        y = self.y.to(J)
        y = y - (self.beta / self.step**self.beta_sigma) * (y - J)
        gamma_k = self.gamma / self.step**self.gamma_sigma
        yyt = (y @ y.T).double()
        lambd = self.lambd.to(J.device)
        lambd = project_onto_simplex(lambd - gamma_k * (yyt @ lambd + self.rho * lambd))
        self.y, self.lambd = y, lambd.cpu()
        return lambd.to(J.dtype) @ y

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "y": None if self.y is None else self.y.clone(),
            "lambd": None if self.lambd is None else self.lambd.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        y, lambd = state.get("y"), state.get("lambd")
        self.y = None if y is None else torch.as_tensor(y).clone()
        self.lambd = None if lambd is None else torch.as_tensor(lambd, dtype=torch.float64).cpu().clone()

    def __repr__(self) -> str:
        return (
            f"MoCo(beta={self.beta}, beta_sigma={self.beta_sigma}, gamma={self.gamma}, "
            f"gamma_sigma={self.gamma_sigma}, rho={self.rho})"
        )
