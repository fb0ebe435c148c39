"""MGDA: the minimum-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting, Requirements


def min_norm_weights(A: np.ndarray, max_iters: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """argmin of αᵀAα over the simplex by Frank-Wolfe with away steps, from α = 1/T."""
    alpha = np.full(A.shape[0], 1.0 / A.shape[0])
    for _ in range(max_iters):
        grad = A @ alpha  # half the gradient of αᵀAα
        value = float(grad @ alpha)
        toward = int(np.argmin(grad))
        support = np.flatnonzero(alpha > 0)
        away = int(support[np.argmax(grad[support])])
        fw_gap, away_gap = value - grad[toward], grad[away] - value
        if fw_gap <= tol:
            break
        is_away = away_gap > fw_gap and alpha[away] < 1.0
        if is_away:
            direction = alpha.copy()
            direction[away] -= 1.0
            max_step = alpha[away] / (1.0 - alpha[away])
        else:
            direction = -alpha
            direction[toward] += 1.0
            max_step = 1.0
        curvature = float(direction @ A @ direction)
        slope = float(direction @ grad)
        step = max_step if curvature <= 0 else min(max(-slope / curvature, 0.0), max_step)
        alpha = np.clip(alpha + step * direction, 0.0, None)
        if is_away and step == max_step:
            alpha[away] = 0.0  # the away vertex leaves the support exactly
        alpha /= alpha.sum()
    return alpha


@register("mgda")
class MGDA(GramianWeighting):
    r"""Multiple-gradient descent (MGDA), solved by Frank-Wolfe on the Gramian as in MGDA-UB.

    The update is the minimum-norm element of the convex hull of the rows of J:

        α* = argmin_{α ∈ Δ_T} ‖Σ_t α_t g_t‖² = argmin_{α ∈ Δ_T} αᵀ G α,   d = Σ_t α*_t g_t.

    Algorithm 2 of the paper is Frank-Wolfe with exact line search from α = 1/T: move towards the
    vertex e_τ, τ = argmin_r (Gα)_r, by γ = argmin_{[0,1]} ‖(1 − γ) Jᵀα + γ g_τ‖². For T = 2 one
    step is exact: α_1 = clip((g_2 − g_1)·g_2 / ‖g_1 − g_2‖², 0, 1). Plain Frank-Wolfe converges
    only sublinearly when the optimum lies on a face of the simplex (a task with weight 0, the
    common case), so we add *away steps* (Lacoste-Julien & Jaggi, NeurIPS 2015), which converge
    linearly, and stop on the Frank-Wolfe duality gap αᵀGα − min_r (Gα)_r < ``tol`` (an upper
    bound on the excess squared norm, G normalised to unit trace) or after ``max_iters`` steps.

    At the optimum every g_t·d ≥ ‖d‖² ≥ 0, so d conflicts with no task; d = 0 exactly at a
    Pareto-stationary point. The weights are scale-free, so G is normalised by its trace first.
    MGDA-UB, the paper's upper bound, applies the same solver to the gradients of the shared
    representation: its preferred source. No gradient normalisation is applied (the
    authors' code offers "l2"/"loss+" normalisations; the paper's algorithm has none).

    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
    https://arxiv.org/abs/1810.04650
    """

    requirements = Requirements(sources=("representation", "jacobian", "gramian"))

    def __init__(self, max_iters: int = 1000, tol: float = 1e-10) -> None:
        super().__init__()
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        self.max_iters = max_iters
        self.tol = tol

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        A, scale = normalise_gramian(G.detach().to("cpu", torch.float64).numpy())
        alpha = np.full(T, 1.0 / max(T, 1))
        if T > 1 and scale is not None:
            alpha = min_norm_weights(A, self.max_iters, self.tol)
        return torch.from_numpy(alpha).to(G)

    def __repr__(self) -> str:
        return f"MGDA(max_iters={self.max_iters}, tol={self.tol})"
