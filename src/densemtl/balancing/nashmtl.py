"""Nash-MTL: the Nash bargaining solution between tasks, Gα = 1/α."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting
from densemtl.balancing.mgda import min_norm_weights


@register("nashmtl")
class NashMTL(GramianWeighting):
    r"""Nash-MTL: weights α > 0 with Gα = 1/α, i.e. α_t (Gα)_t = 1 for every task.

    d = Jᵀα is the Nash bargaining solution of the tasks over a ball of updates: every task gets
    α_t g_tᵀd = 1, so ‖d‖² = αᵀGα = T. As in the paper (Section 3.3), α comes from a sequence of
    convex problems (a concave-convex procedure): with β_t(α) = (Gα)_t and the concave
    φ(α) = Σ_t log α_t + log β_t(α),

        α^{k+1} = argmin_{α ≥ 0}  Σ_t β_t(α) + ∇φ(α^k)ᵀ α   s.t.  α_t β_t(α) ≥ 1 for all t,

    at most ``optim_niter`` times, stopping when ‖Gα − 1/α‖ < 1e-3 or α stops moving (the
    authors' tests). Each T-variable problem is solved by SLSQP (scipy), not cvxpy/ECOS. The
    start is the previous step's α (the authors' warm start, kept as state) when it still
    improves every task, else the MGDA point made strictly feasible. Near Pareto-stationary
    points SLSQP can stall; then damped Newton steps on the convex ½αᵀGα − Σ log α_t (same
    stationary point) finish. We solve on G / tr G and map back (α / √tr G): exact at any
    scale, and the update is scale-free (norm √T), not linear in the scale of J.

    Edge cases: a zero gradient gets α_t = 0 and the other tasks bargain alone; when no update
    improves every task (0 in the hull of the rows) no solution exists and the weights are 0,
    the disagreement point. ``max_norm > 0`` clips ‖d‖ as the authors' code and LibMTL do with
    ``clip_grad_norm_`` (1.0 in their NYUv2 runs; off here). The authors' ``update_weights_every``
    (reuse α for several steps) is left to the engine, which may cache a GramianWeighting's weights.

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
    Bargaining Game", ICML 2022, https://arxiv.org/abs/2202.01017
    """

    def __init__(self, max_norm: float = 0.0, optim_niter: int = 20) -> None:
        super().__init__()
        if max_norm < 0 or optim_niter < 1:
            raise ValueError(f"need max_norm >= 0 and optim_niter >= 1, got {max_norm}, {optim_niter}")
        self.max_norm = max_norm
        self.optim_niter = optim_niter
        self.prev_alpha: Tensor | None = None  # α on the trace-normalised Gramian (warm start)

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T, G64 = G.shape[0], G.detach().to("cpu", torch.float64)
        normalised, scale = normalise_gramian(G64)
        if scale is None:
            return torch.zeros(T, dtype=G.dtype, device=G.device)
        A = normalised.numpy()
        # G is only as exact as its dtype: a relative size below this is treated as zero
        noise = 10 * torch.finfo(G.dtype).eps if G.dtype.is_floating_point else 1e-14
        active = np.flatnonzero(np.diag(A) > noise)
        warm = self.prev_alpha
        warm = warm.numpy()[active] if warm is not None and warm.shape == (T,) else None
        alpha, sub = np.zeros(T), self._bargain(A[np.ix_(active, active)], warm, noise)
        if sub is not None:
            alpha[active] = sub
            self.prev_alpha = torch.from_numpy(alpha.copy())
        weights = torch.from_numpy(alpha / np.sqrt(scale))
        norm = float(weights @ G64 @ weights) ** 0.5
        if 0 < self.max_norm < norm:
            weights = weights * (self.max_norm / norm)
        return weights.to(G)

    def _bargain(self, B: np.ndarray, warm: np.ndarray | None, noise: float) -> np.ndarray | None:
        k = B.shape[0]
        if k <= 1:
            return 1.0 / np.sqrt(B[0]) if k == 1 else np.zeros(0)
        # A solution exists iff some update improves every task, i.e. the min-norm point d* of the
        # hull is not 0; then g_t·d* >= ‖d*‖² > 0 gives a strictly feasible start.
        weights = min_norm_weights(B, tol=1e-14)
        d2 = float(weights @ B @ weights)
        if d2 <= max(noise, 1e-12):
            return None
        start = weights + min(1.0 / k, 0.5 * d2 / max(float(-(B.sum(0)).min()), 1e-300))
        if warm is not None and np.all(warm > 0) and np.all(B @ warm > 0):
            start = warm  # the authors' warm start, when it still improves every task
        if not np.min(start * (B @ start)) > 0:
            return None
        alpha = start / np.sqrt(np.min(start * (B @ start)))  # scaled onto the feasible set
        constraint = {
            "type": "ineq",
            "fun": lambda a: a * (B @ a) - 1.0,
            "jac": lambda a: np.diag(B @ a) + a[:, None] * B,
        }
        for _ in range(self.optim_niter):
            cost = B.sum(0) + 1.0 / alpha + B @ (1.0 / (B @ alpha))  # Σβ + linearised φ
            result = minimize(
                lambda a, cost=cost: (float(cost @ a), cost),
                alpha,
                jac=True,
                method="SLSQP",
                bounds=[(0.0, None)] * k,
                constraints=(constraint,),
                options={"maxiter": 100, "ftol": 1e-12},
            )
            new = result.x  # a failed subproblem ends the sequence at the last feasible iterate
            if not (np.all(np.isfinite(new)) and np.all(new * (B @ new) >= 1 - 1e-6)) or cost @ new > cost @ alpha:
                break
            moved = np.linalg.norm(new - alpha)
            alpha = new
            if moved < 1e-6 or np.linalg.norm(B @ alpha - 1.0 / alpha) < 1e-3:  # the authors' tests
                break
        return alpha if np.linalg.norm(alpha * (B @ alpha) - 1.0) < 1e-6 else self._newton(B, alpha)

    @staticmethod
    def _newton(B: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        # Gα = 1/α is the stationarity condition of the convex f(α) = ½αᵀGα − Σ log α_t: damped
        # Newton on f finishes what the CCP leaves undone near Pareto-stationary points.
        def f(a: np.ndarray) -> float:
            return 0.5 * float(a @ B @ a) - float(np.log(a).sum()) if np.all(a > 0) else np.inf

        for _ in range(50):
            grad = B @ alpha - 1.0 / alpha
            if np.linalg.norm(alpha * grad) < 1e-10:
                break
            step = np.linalg.solve(B + np.diag(alpha**-2.0), grad)
            t = 1.0
            while t > 1e-12 and f(alpha - t * step) > f(alpha) - 0.25 * t * (grad @ step):
                t *= 0.5
            if t <= 1e-12:
                break
            alpha = alpha - t * step
        return alpha

    def state_dict(self) -> dict[str, Any]:
        return {"prev_alpha": None if self.prev_alpha is None else self.prev_alpha.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        alpha = state.get("prev_alpha")
        self.prev_alpha = None if alpha is None else alpha.detach().to("cpu", torch.float64).clone()

    def __repr__(self) -> str:
        return f"NashMTL(max_norm={self.max_norm}, optim_niter={self.optim_niter})"
