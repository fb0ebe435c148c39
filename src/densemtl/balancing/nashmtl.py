"""Nash-MTL: the Nash bargaining solution between tasks, Gα = 1/α."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import GramianWeighting
from densemtl.balancing.mgda import min_norm_weights


@register("nashmtl")
class NashMTL(GramianWeighting):
    r"""Nash-MTL: weights α > 0 with Gα = 1/α, i.e. α_t (Gα)_t = 1 for every task.

    The update d = Jᵀα is the Nash bargaining solution of the tasks over the ball of updates; it
    gives every task the same "utility elasticity" α_t g_tᵀd = 1, so ‖d‖² = αᵀGα = T. As in the
    paper (Section 3.3), α is found by a sequence of convex problems (a concave-convex
    procedure): with β_t(α) = (Gα)_t and φ(α) = Σ_t log α_t + log β_t(α) (concave), iterate

        α^{k+1} = argmin_{α ≥ 0}  Σ_t β_t(α) + ∇φ(α^k)ᵀ α   s.t.  α_t β_t(α) ≥ 1 for all t,

    ``optim_niter`` times at most, stopping when ‖Gα − 1/α‖ < 1e-3 or α stops moving (the
    authors' criteria). Each T-variable subproblem is solved with SLSQP (scipy) instead of
    cvxpy/ECOS, so cvxpy is no dependency. The iteration starts from the previous step's α (the
    authors' warm start); that α is the method's state. The problems are solved on G / tr(G)
    and mapped back (α ↦ α / √tr G), so the solution is exact at any gradient scale; the update
    is therefore scale-free (norm √T), not linear in the scale of J.

    Deviations and edge cases: a task with a zero gradient gets α_t = 0 and the others bargain
    alone; when no update improves every task (0 in the convex hull of the rows, so no Nash
    solution exists) the weights are 0, the disagreement point. ``max_norm > 0`` clips ‖d‖ to
    it, as the authors' code and LibMTL do with ``clip_grad_norm_`` (their NYUv2 runs use 1.0;
    off by default here). ``update_weights_every`` reuses α between solves (1 in the paper's
    main results).

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
    Bargaining Game", ICML 2022, https://arxiv.org/abs/2202.01017
    """

    def __init__(self, max_norm: float = 0.0, optim_niter: int = 20, update_weights_every: int = 1) -> None:
        super().__init__()
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm}")
        if optim_niter < 1 or update_weights_every < 1:
            raise ValueError("optim_niter and update_weights_every must be >= 1")
        self.max_norm = max_norm
        self.optim_niter = optim_niter
        self.update_weights_every = update_weights_every
        self.step = 0
        self.prev_alpha: Tensor | None = None  # α on the trace-normalised Gramian (warm start)
        self.prev_weights: Tensor | None = None

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        reuse = self.prev_weights is not None and self.prev_weights.shape == (T,)
        if not (reuse and self.step % self.update_weights_every != 0):
            # G is only as exact as its dtype: a relative size below this is treated as zero
            noise = 10 * torch.finfo(G.dtype).eps if G.dtype.is_floating_point else 1e-14
            self.prev_weights = self._solve(G.detach().to("cpu", torch.float64), noise)
        self.step += 1
        weights = self.prev_weights.clone()
        if self.max_norm > 0:
            norm = float(weights @ G.detach().to("cpu", torch.float64) @ weights) ** 0.5
            if norm > self.max_norm:
                weights = weights * (self.max_norm / norm)
        return weights.to(G)

    def _solve(self, G: Tensor, noise: float) -> Tensor:
        T = G.shape[0]
        scale = float(G.diagonal().sum())
        alpha = np.zeros(T)
        if not (scale > 0 and np.isfinite(scale)):
            return torch.zeros(T, dtype=torch.float64)
        A = (G / scale).numpy()
        active = np.flatnonzero(np.diag(A) > noise)
        B = A[np.ix_(active, active)]
        warm = None
        if self.prev_alpha is not None and self.prev_alpha.shape == (T,):
            warm = self.prev_alpha.numpy()[active]
        sub = self._bargain(B, warm, noise)
        if sub is not None:
            alpha[active] = sub
            self.prev_alpha = torch.from_numpy(alpha.copy())
        return torch.from_numpy(alpha / np.sqrt(scale))

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
            new = result.x
            # keep the iterate feasible: a failed subproblem ends the sequence where it is
            if not (np.all(np.isfinite(new)) and np.all(new * (B @ new) >= 1.0 - 1e-6)):
                break
            if cost @ new > cost @ alpha:
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
            return 0.5 * float(a @ B @ a) - float(np.log(a).sum())

        for _ in range(50):
            grad = B @ alpha - 1.0 / alpha
            if np.linalg.norm(alpha * grad) < 1e-10:
                break
            step = np.linalg.solve(B + np.diag(alpha**-2.0), grad)
            t = 1.0
            while t > 1e-12 and (np.any(alpha - t * step <= 0) or f(alpha - t * step) > f(alpha) - 0.25 * t * (grad @ step)):
                t *= 0.5
            alpha = alpha - t * step
        return alpha

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step}
        for key in ("prev_alpha", "prev_weights"):
            value = getattr(self, key)
            state[key] = None if value is None else value.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for key in ("prev_alpha", "prev_weights"):
            value = state.get(key)
            setattr(self, key, None if value is None else value.detach().to("cpu", torch.float64).clone())

    def __repr__(self) -> str:
        return (
            f"NashMTL(max_norm={self.max_norm}, optim_niter={self.optim_niter}, "
            f"update_weights_every={self.update_weights_every})"
        )
