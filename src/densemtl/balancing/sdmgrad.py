"""SDMGrad: stochastic direction-oriented multiple-gradient descent."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting
from densemtl.balancing.modo import project_onto_simplex


@register("sdmgrad")
class SDMGrad(GramianWeighting):
    r"""SDMGrad: MGDA's min-norm problem pulled towards the mean gradient g0 = Jᵀ 1/T.

    Xiao, Ban and Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms", NeurIPS 2023, https://arxiv.org/abs/2305.18409.

    The weights w solve min_{w in simplex} 1/2 ||Jᵀ w + lamda g0||², i.e. with the normalised
    Gramian Ĝ = G / s² (s = mean_t ||g_t||, as in the authors' code) and w̃ = 1/T,

        niter steps of  v <- momentum v + Ĝ (w + lamda w̃),  w <- Pi_simplex(w - lr v),

    warm-started from the previous call's w (the state), and the update is

        out = Jᵀ (w + lamda w̃) / (1 + lamda).

    lamda -> inf gives the mean gradient, lamda = 0 MGDA. The paper's stochastic version draws
    Ĝ as J_1 J_2ᵀ from two independent batches ("double sampling") and the update from a third;
    with one batch per step we use the same J throughout, i.e. SDMGrad without double sampling.
    Defaults lamda=0.3, niter=20 (LibMTL, the paper's NYUv2 setting), lr=10, momentum=0.5: the
    authors' inner SGD, whose gradient Ĝ (w + lamda w̃) is that of the 1/2-scaled objective above.
    LibMTL's copy takes the same gradient with lr=5, i.e. half the authors' step.
    With lr=10 the inner loop takes steps far beyond 1/||Ĝ|| and only approximates the argmin
    (w often sits near a vertex, as in the authors' runs); lr <= 1 with more niter solves it.
    """

    def __init__(self, lamda: float = 0.3, niter: int = 20, lr: float = 10.0, momentum: float = 0.5) -> None:
        super().__init__()
        if lamda < 0 or niter < 1 or lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"SDMGrad needs lamda >= 0, niter >= 1, lr > 0, 0 <= momentum < 1; got lamda={lamda}, "
                f"niter={niter}, lr={lr}, momentum={momentum}"
            )
        self.lamda = float(lamda)
        self.niter = int(niter)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.w: Tensor | None = None

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        G64 = G.detach().double()
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
        w = self.w.to(G.device) if self.w is not None and self.w.numel() == T else uniform
        Gn, scale2 = normalise_gramian(G64, by="mean_norm")
        if scale2 is not None:
            velocity = torch.zeros_like(w)
            for _ in range(self.niter):
                velocity = self.momentum * velocity + Gn @ (w + self.lamda * uniform)
                w = project_onto_simplex(w - self.lr * velocity)
        self.w = w.cpu()
        return ((w + self.lamda * uniform) / (1.0 + self.lamda)).to(G.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"w": None if self.w is None else self.w.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = state.get("w")
        self.w = None if w is None else torch.as_tensor(w, dtype=torch.float64).cpu().clone()

    def __repr__(self) -> str:
        return f"SDMGrad(lamda={self.lamda}, niter={self.niter}, lr={self.lr}, momentum={self.momentum})"
