"""DB-MTL: balance the loss scales (logarithm) and the gradient magnitudes (to the largest)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import Aggregator, Requirements


@register("dbmtl")
class DBMTL(Aggregator):
    r"""Dual-balancing multi-task learning (DB-MTL), Algorithm 1 of the paper.

    Lin, Jiang, Ye, Zhang, Chen, Chen, Liu and Kwok, "Dual-Balancing for Multi-Task Learning",
    2023, https://arxiv.org/abs/2308.12029.

    *Loss-scale balancing*: the per-task gradients are those of log L_t, so every task's loss
    counts by its relative change (``loss_transform`` gives log(L_t + ε), which the engine
    differentiates): g_t = ∇ log L_t = ∇L_t / L_t.

    *Gradient-magnitude balancing*: at call k = 1, 2, …, with β_k = β / k^σ, an exponential
    moving average of each task's gradient, started at zero,

        ĝ_t ← β_k ĝ_t + (1 − β_k) g_t,

    and the update scales every averaged gradient up to the largest norm:

        d = Σ_t (max_s ‖ĝ_s‖ / ‖ĝ_t‖) ĝ_t   (a zero ĝ_t contributes nothing).

    Defaults are the authors' (LibMTL, from the same group): β = 0.9, σ = 0 (``beta_sigma``, a
    constant β), ε = 1e-8 (inside the logarithm). No bias correction: the average starts at zero,
    so the first update is (1 − β) times the balanced gradient. The authors' code divides by
    ‖ĝ_t‖ + ε; we skip zero rows instead, which keeps d exactly invariant to rescaling one
    task's gradient and homogeneous of degree 1 in J at every scale.

    The average needs whole rows of J, so this is an ``Aggregator`` and not a Gramian weighting
    (its weights cannot be reused with ``--recompute-every``). The average follows each shared
    parameter across steps, so it runs in parameters mode only (``Requirements.coordinate_state``;
    LibMTL refuses representation gradients too): a representation gradient belongs to one
    batch's images. The state (ĝ, as large as J) is restarted if the shape of J changes, and is
    saved by ``state_dict``.
    """

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"DB-MTL needs 0 <= beta < 1, got beta={beta}")
        if beta_sigma < 0:
            raise ValueError(f"DB-MTL needs beta_sigma >= 0, got {beta_sigma}")
        if not eps > 0:
            raise ValueError(f"DB-MTL needs eps > 0, got {eps}")
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.eps = float(eps)
        self.requirements = Requirements(
            sources=("jacobian",), coordinate_state=True, loss_transform=self.loss_transform
        )
        self.step = 0
        self.grad_ema: Tensor | None = None

    def loss_transform(self, losses: Tensor) -> Tensor:
        """log(L_t + ε): the losses whose Jacobian is balanced."""
        return torch.log(losses + self.eps)

    def aggregate(self, J: Tensor) -> Tensor:
        J = J.detach()
        if self.grad_ema is None or self.grad_ema.shape != J.shape:
            self.step = 0
            self.grad_ema = torch.zeros_like(J)
        ema = self.grad_ema.to(J)
        self.step += 1
        beta_k = self.beta / self.step**self.beta_sigma
        # A new tensor, not an in-place update: J may be the engine's reused buffer.
        ema = beta_k * ema + (1.0 - beta_k) * J
        self.grad_ema = ema
        norms = torch.linalg.vector_norm(ema, dim=1)
        positive = norms > 0
        scale = torch.where(positive, norms.max() / torch.where(positive, norms, 1.0), 0.0)
        return scale @ ema

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "grad_ema": None if self.grad_ema is None else self.grad_ema.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        ema = state.get("grad_ema")
        self.grad_ema = None if ema is None else torch.as_tensor(ema).clone()

    def __repr__(self) -> str:
        return f"DBMTL(beta={self.beta}, beta_sigma={self.beta_sigma}, eps={self.eps})"
