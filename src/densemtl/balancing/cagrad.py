"""CAGrad: the best worst-task improvement within a ball around the mean gradient."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting


@register("cagrad")
class CAGrad(GramianWeighting):
    r"""Conflict-averse gradient descent (CAGrad, Algorithm 1 of the paper).

    With the mean gradient g_0 = (1/T) Σ_t g_t, CAGrad solves

        max_d min_t g_tᵀ d   s.t.  ‖d − g_0‖ ≤ c ‖g_0‖,

    through its dual on the simplex: with g_w = Jᵀw and G = J Jᵀ,

        w* = argmin_{w ∈ Δ_T}  g_wᵀ g_0 + c ‖g_0‖ ‖g_w‖
           = argmin_{w ∈ Δ_T}  wᵀG1/T + c √(1ᵀG1/T²) √(wᵀGw),

    and d = g_0 + (c ‖g_0‖ / ‖g_{w*}‖) g_{w*}: the weights are 1/T + c‖g_0‖/‖g_{w*}‖ · w*.
    ``rescale`` follows the authors' code: 0 returns d, 1 returns d / (1 + c²) (the default),
    2 returns d / (1 + c). c = 0 gives the mean; a large c approaches MGDA.

    Defaults: ``c=0.5`` is the default of the authors' code and of LibMTL; the paper's
    NYUv2/Cityscapes runs used c = 0.4 (their ``run.sh``), which is one keyword away. The dual
    (T variables) is solved with SLSQP on the trace-normalised Gramian, so the weights do not
    depend on the gradient scale and the update is linear in it. If g_{w*} vanishes (a
    Pareto-stationary point) the ball term is dropped and d = g_0.

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021, https://arxiv.org/abs/2110.14048
    """

    def __init__(self, c: float = 0.5, rescale: int = 1) -> None:
        super().__init__()
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale}")
        self.c = c
        self.rescale = rescale

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        mean = np.full(T, 1.0 / max(T, 1))
        A, scale = normalise_gramian(G.detach().to("cpu", torch.float64).numpy())
        weights = mean.copy()
        if T > 1 and self.c > 0 and scale is not None:
            radius = self.c * float(np.sqrt(max(mean @ A @ mean, 0.0)))
            w = self._solve_dual(A, A @ mean, radius) if radius > 0 else mean
            gw_norm = float(np.sqrt(max(w @ A @ w, 0.0)))
            # relative noise of G in its own dtype: below it g_w is indistinguishable from 0
            if gw_norm**2 > 10 * torch.finfo(G.dtype).eps:
                weights = mean + (radius / gw_norm) * w
        if self.rescale == 1:
            weights = weights / (1.0 + self.c**2)
        elif self.rescale == 2:
            weights = weights / (1.0 + self.c)
        return torch.from_numpy(weights).to(G)

    @staticmethod
    def _solve_dual(A: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
        T = A.shape[0]
        delta = 1e-14  # keeps the square root differentiable at g_w = 0

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            norm = np.sqrt(max(w @ A @ w, 0.0) + delta)
            return float(w @ b + radius * norm), b + radius * (A @ w) / norm

        result = minimize(
            objective,
            np.full(T, 1.0 / T),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * T,
            constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
            options={"maxiter": 200, "ftol": 1e-12},
        )
        w = np.clip(np.nan_to_num(result.x, nan=1.0 / T), 0.0, None)
        return w / w.sum() if w.sum() > 0 else np.full(T, 1.0 / T)

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c}, rescale={self.rescale})"
