"""FairGrad: alpha-fair allocation of the update across tasks."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting


@register("fairgrad")
class FairGrad(GramianWeighting):
    r"""FairGrad: the update whose per-task improvements g_tᵀ d are alpha-fair.

    Ban and Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    https://arxiv.org/abs/2402.15638.

    The weights w > 0 solve G w = w^(-1/alpha) (elementwise power) and out = Jᵀ w. alpha = 1 is
    proportional fairness (w_t (G w)_t = 1), alpha -> inf max-min fairness, alpha = 0 linear
    scalarisation (we return the mean, as torchjd does).

    The authors (and LibMTL, torchjd) run ``scipy.optimize.least_squares`` on the residual.
    We use that the equation is the stationarity condition of the strictly convex
    F(w) = 1/2 wᵀ G w - sum_t phi(w_t), with phi' (w) = w^(-1/alpha), and minimise F by damped
    Newton steps, after dividing G by c = trace(G)/T (the solution scales as c^(-alpha/(1+alpha)),
    so any gradient scale is solved at scale 1). Where no solution exists (a zero row, rows that
    cancel) F is unbounded below; the ridge ``reg_eps`` I added to G / c keeps the weights finite
    (a zero row's weight is then large but multiplies a zero gradient).
    """

    def __init__(self, alpha: float = 1.0, max_iters: int = 100, reg_eps: float = 1e-8) -> None:
        super().__init__()
        if alpha < 0 or max_iters < 1 or reg_eps <= 0:
            raise ValueError(
                f"FairGrad needs alpha >= 0, max_iters >= 1, reg_eps > 0; got {alpha}, {max_iters}, {reg_eps}"
            )
        self.alpha = float(alpha)
        self.max_iters = int(max_iters)
        self.reg_eps = float(reg_eps)

    def _phi(self, w: np.ndarray) -> np.ndarray:
        if self.alpha == 1.0:
            return np.log(w)
        p = 1.0 - 1.0 / self.alpha
        return w**p / p

    def _objective(self, A: np.ndarray, w: np.ndarray) -> float:
        return float(0.5 * w @ A @ w - self._phi(w).sum())

    def solve(self, A: np.ndarray) -> np.ndarray:
        """The w > 0 with A w = w^(-1/alpha), for a symmetric positive definite A (float64)."""
        a = 1.0 / self.alpha
        w = np.clip(np.diag(A), 1e-12, None) ** (-1.0 / (1.0 + a))
        f = self._objective(A, w)
        for _ in range(self.max_iters):
            grad = A @ w - w ** (-a)
            if np.abs(grad).max() <= 1e-12 * (1.0 + np.abs(w ** (-a)).max()):
                break
            H = A + np.diag(a * w ** (-a - 1.0))
            step = np.linalg.solve(H, grad)
            # Backtrack to stay in w > 0 and to decrease F.
            t = 1.0
            neg = step > 0
            if neg.any():
                t = min(1.0, 0.99 * float(np.min(w[neg] / step[neg])))
            while t > 1e-12:
                w_new = w - t * step
                f_new = self._objective(A, w_new)
                if f_new <= f - 1e-4 * t * float(grad @ step) or f_new <= f:
                    break
                t *= 0.5
            else:
                break
            w, f = w_new, f_new
        return w

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        G64 = G.detach().double().cpu().numpy()
        A, c = normalise_gramian(0.5 * (G64 + G64.T), by="mean_diagonal")
        if self.alpha == 0.0 or c is None:
            return torch.full((T,), 1.0 / T, dtype=G.dtype, device=G.device)
        A = A + self.reg_eps * np.eye(T)
        w = self.solve(A) * c ** (-self.alpha / (1.0 + self.alpha))
        return torch.as_tensor(w, dtype=G.dtype, device=G.device)

    def __repr__(self) -> str:
        return f"FairGrad(alpha={self.alpha}, max_iters={self.max_iters}, reg_eps={self.reg_eps})"
