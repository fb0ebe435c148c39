"""ACG: GradVac-style conflict correction with targets kept across steps, then IMTL-G."""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.gradvac import VaccineWeighting
from densemtl.balancing.imtl import IMTLG


@register("acg")
class ACG(VaccineWeighting):
    r"""Adaptive correcting gradient (ACG): conflict correction, then dominance correction.

    1. *Conflict correction* (GradVac). An EMA target φ̂_ij (start 0) is kept for every ordered
       pair across calls. For each task i, g_i' = g_i, then for each j ≠ i in a random order,
       with φ = cos(g_i', g_j):

           if φ < φ̂_ij:  g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1−φ²) − φ √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²)) · g_j
           φ̂_ij ← (1 − β) φ̂_ij + β φ      (always)

       which leaves cos(g_i', g_j) = φ̂_ij exactly. Written as g_i' = Σ_k C_ik g_k, i.e. J' = C J.
    2. *Dominance correction* (IMTL-G closed form). With u_t = g_t'/‖g_t'‖,
       D = [g_1'−g_2'; …; g_1'−g_T'], U = [u_1−u_2; …; u_1−u_T]:
       α_{2..T} = g_1' Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ α_{2..T}, and d = Σ_t α_t g_t', whose projections
       on every u_t are equal. ``IMTLG`` computes α from the Gramian of the corrected rows,
       G' = C G Cᵀ (pseudo-inverse where G' is singular, zero where no impartial direction exists).

    So d = (Cᵀα)ᵀ J with C and α functions of G (and of the targets): a ``GramianWeighting``,
    stateful like ``GradVac``. ``correct_conflicts=False`` takes C = I (plain IMTL-G);
    ``correct_dominance=False`` takes α = 1/T (the mean of the corrected rows, i.e. GradVac's sum
    divided by T, so every variant's weights sum to 1); both off give the mean of the rows. The
    order of j is drawn from ``self.generator`` (default seeded 0); ``correction`` holds the last C.

    Ji, Sun, Meng, Pang & Tian, "Variable multi-scale attention fusion network and adaptive
    correcting gradient optimization for multi-task learning", Pattern Recognition 162 (2025)
    111423, https://doi.org/10.1016/j.patcog.2025.111423 (code: github.com/SyqxhSt/Net-Opt-MTL).
    Where we differ from that code: the targets are per pair and persist across steps with
    β = 0.01 (theirs: one scalar reset every step, β = 0.5), the correction really changes the
    gradient (theirs rebinds a loop variable), ‖g_j‖ divides (theirs ‖g_i‖), any number of tasks,
    and α weights the shared gradient (theirs applies it to task-specific parameters only).
    """

    def __init__(
        self,
        beta: float = 0.01,
        correct_conflicts: bool = True,
        correct_dominance: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(beta, eps)
        self.correct_conflicts = correct_conflicts
        self.correct_dominance = correct_dominance
        #: C of the last call (T x T, float64): the corrected rows are ``correction @ J``
        self.correction: Tensor | None = None
        self._imtl = IMTLG()

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        if self.correct_conflicts:
            C = self.vaccine(G)
        else:
            C = torch.eye(T, dtype=torch.float64)
        self.correction = C
        if not self.correct_dominance:
            return (C.sum(dim=0) / max(T, 1)).to(G)
        # α is scale-free; O(1) entries survive the cast back to G's dtype
        A, _ = normalise_gramian(G.detach().to("cpu", torch.float64))
        # G' is handed over in G's dtype so that IMTL-G's rank tolerance matches G's precision.
        alpha = self._imtl.weights_from_gramian((C @ A @ C.T).to(G.dtype)).to(torch.float64)
        return (C.T @ alpha).to(G)

    def __repr__(self) -> str:
        return (
            f"ACG(beta={self.beta}, correct_conflicts={self.correct_conflicts}, "
            f"correct_dominance={self.correct_dominance}, eps={self.eps})"
        )
