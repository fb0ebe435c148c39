"""GradVac: pull each pair of task gradients towards an adaptive target cosine similarity."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting


def vaccine_coefficients(G: Tensor, phi_hat: Tensor, *, beta: float, eps: float, generator: torch.Generator) -> Tensor:
    """GradVac's corrected rows as coefficients: C (T x T, float64, CPU) with g_i' = sum_k C_ik g_k.

    ``G`` is the Gramian of the rows; ``phi_hat`` (T x T, float64) holds the EMA targets and is
    updated in place. One ``randperm(T - 1)`` per task is drawn from ``generator``.
    """
    T = G.shape[0]
    A, _ = normalise_gramian(G.detach().to("cpu", torch.float64))  # cosines and norm ratios are scale-free
    C = torch.eye(T, dtype=torch.float64)
    for i in range(T):
        others = [j for j in range(T) if j != i]
        for k in torch.randperm(T - 1, generator=generator, device=generator.device).tolist():
            j = others[k]
            dots = C[i] @ A  # g_i' · g_k for every k
            norm_i2, norm_j2 = float(dots @ C[i]), float(A[j, j])
            if norm_i2 <= 1e-30 or norm_j2 <= 1e-30:
                continue
            norm_i, norm_j = math.sqrt(norm_i2), math.sqrt(norm_j2)
            phi = min(max(float(dots[j]) / (norm_i * norm_j), -1.0), 1.0)
            target = float(phi_hat[i, j])
            if phi < target:
                root_t = math.sqrt(max(1.0 - target * target, 0.0))
                root_p = math.sqrt(max(1.0 - phi * phi, 0.0))
                C[i, j] += norm_i * (target * root_p - phi * root_t) / (norm_j * root_t + eps)
            phi_hat[i, j] = (1.0 - beta) * target + beta * phi
    return C


class VaccineWeighting(GramianWeighting):
    """What GradVac and ACG share: ``beta``, ``eps`` and the EMA cosine targets φ̂.

    φ̂ (T x T, float64) is kept across calls and in ``state_dict()``, and is reset when the
    number of tasks changes.
    """

    def __init__(self, beta: float, eps: float) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {beta}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.beta = beta
        self.eps = eps
        self.phi_hat: Tensor | None = None

    def vaccine(self, G: Tensor) -> Tensor:
        """GradVac's coefficients C for the Gramian ``G``, updating φ̂ (see ``vaccine_coefficients``)."""
        T = G.shape[0]
        if self.phi_hat is None or self.phi_hat.shape != (T, T):
            self.phi_hat = torch.zeros(T, T, dtype=torch.float64)
        return vaccine_coefficients(G, self.phi_hat, beta=self.beta, eps=self.eps, generator=self.rng())

    def state_dict(self) -> dict[str, Any]:
        return {"phi_hat": None if self.phi_hat is None else self.phi_hat.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phi_hat = state.get("phi_hat")
        self.phi_hat = None if phi_hat is None else phi_hat.detach().to("cpu", torch.float64).clone()


@register("gradvac")
class GradVac(VaccineWeighting):
    r"""Gradient Vaccine (GradVac, Algorithm 1 of the paper), stateful.

    An EMA target φ̂_ij (start 0) is kept for every ordered pair of tasks. For each task i,
    g_i' = g_i, then for each j ≠ i in a random order, with φ = cos(g_i', g_j):

        if φ < φ̂_ij:  g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1−φ²) − φ √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²)) · g_j
        φ̂_ij ← (1 − β) φ̂_ij + β φ           (always, with the φ measured before the correction)

    and the update is d = Σ_i g_i'. The correction sets cos(g_i', g_j) to exactly φ̂_ij; with all
    targets at 0 (first step) it is PCGrad's projection. ``beta=0.01`` as in the paper.

    As in PCGrad, g_i' = Σ_k C_ik g_k and cos, ‖g_i'‖ follow from G (‖g_i'‖² = C_i G C_iᵀ), so this
    is a ``GramianWeighting`` returning 1ᵀC. Pairs where either gradient is zero are skipped
    (their cosine is undefined), and ``eps`` keeps the correction finite as φ̂ → 1. The order is
    drawn from ``self.generator`` (one ``randperm(T − 1)`` per task); the targets live across calls
    in ``state_dict()`` and are reset when the number of tasks changes. The paper applies GradVac
    per layer or per parameter group; here it acts on the whole shared Jacobian it is given.

    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021, https://arxiv.org/abs/2010.05874
    """

    def __init__(self, beta: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__(beta, eps)

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        return self.vaccine(G).sum(dim=0).to(G)

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta}, eps={self.eps})"
