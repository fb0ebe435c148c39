"""UPGrad: project every task gradient onto the dual cone of all of them, then average."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting


def dual_cone_weights(G: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The v solving min_v vᵀ G v subject to v >= u, for a symmetric PSD G (float64).

    With v = u + z and G = AᵀA this is the non-negative least squares problem
    min_{z >= 0} ||A z + A u||², solved exactly (active set) by ``scipy.optimize.nnls``.
    """
    lam, V = np.linalg.eigh(G)
    A = np.sqrt(np.clip(lam, 0.0, None))[:, None] * V.T
    z, _ = nnls(A, -A @ u, maxiter=max(50, 10 * len(u)))
    return u + z


@register("upgrad")
class UPGrad(GramianWeighting):
    r"""Unconflicting projection of gradients (UPGrad).

    Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
    https://arxiv.org/abs/2406.16232 (the method of torchjd).

    Each row g_i is projected onto the dual cone {x : J x >= 0} of the rows and the projections
    are combined with the preference vector p (uniform 1/T by default):

        out = sum_i p_i pi_J(g_i),   pi_J(g_i) = Jᵀ v_i,   v_i = argmin_{v >= p_i e_i} vᵀ G v,

    so out = Jᵀ (sum_i v_i), and J out >= 0: the update conflicts with no task. Like torchjd,
    G is first divided by its trace (set to 0 when the trace is below ``norm_eps``, so tiny
    Jacobians fall back to the weighted mean) and ``reg_eps`` I is added before solving; each
    T-dimensional QP is solved exactly as a non-negative least-squares problem.
    """

    def __init__(
        self,
        pref_vector: Sequence[float] | Tensor | None = None,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        if norm_eps < 0 or reg_eps < 0:
            raise ValueError(f"UPGrad needs norm_eps >= 0 and reg_eps >= 0, got {norm_eps}, {reg_eps}")
        self.pref_vector = None if pref_vector is None else torch.as_tensor(pref_vector, dtype=torch.float64)
        if self.pref_vector is not None and self.pref_vector.dim() != 1:
            raise ValueError(f"UPGrad pref_vector must be 1-D, got shape {tuple(self.pref_vector.shape)}")
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)

    def _pref(self, T: int) -> np.ndarray:
        if self.pref_vector is None:
            return np.full(T, 1.0 / T)
        if self.pref_vector.numel() != T:
            raise ValueError(f"UPGrad pref_vector has {self.pref_vector.numel()} entries for {T} tasks")
        return self.pref_vector.numpy()

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        pref = self._pref(T)
        G64 = G.detach().double().cpu().numpy()
        G64, trace = normalise_gramian(0.5 * (G64 + G64.T))
        if trace is None or trace <= self.norm_eps:
            G64 = np.zeros_like(G64)
        G64 = G64 + self.reg_eps * np.eye(T)
        w = np.zeros(T)
        for i in range(T):
            u = np.zeros(T)
            u[i] = pref[i]
            w += dual_cone_weights(G64, u)
        return torch.as_tensor(w, dtype=G.dtype, device=G.device)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"UPGrad(pref_vector={pref}, norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"
