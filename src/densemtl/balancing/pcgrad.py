"""PCGrad: project each task gradient off the gradients it conflicts with."""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting


@register("pcgrad")
class PCGrad(GramianWeighting):
    r"""Projecting conflicting gradients (PCGrad, Algorithm 1 of the paper).

    For each task i, start from g_i^PC = g_i and visit the other tasks j in a random order; when
    g_i^PC · g_j < 0, remove the conflicting component:

        g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j.

    The update is the sum d = Σ_i g_i^PC (the paper and LibMTL sum; torchjd sums too).

    Every g_i^PC stays a linear combination Σ_k C_ik g_k of the original rows, and the two numbers
    a projection needs are g_i^PC · g_j = (C G)_ij and ‖g_j‖² = G_jj, so we track the
    coefficients C on the Gramian alone and return the weights 1ᵀC: the method is a
    ``GramianWeighting`` and never touches J. The order is drawn from ``self.generator``
    (one ``randperm(T)`` per task, skipping i itself), so a run is reproducible.

    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020, https://arxiv.org/abs/2001.06782
    """

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        # ratios only: keeps every intermediate O(1) at any gradient scale
        A, _ = normalise_gramian(G.detach().to("cpu", torch.float64))
        weights = torch.zeros(T, dtype=torch.float64)
        rng = self.rng()
        for i in range(T):
            coef = torch.zeros(T, dtype=torch.float64)
            coef[i] = 1.0
            for j in torch.randperm(T, generator=rng, device=rng.device).tolist():
                if j == i or A[j, j] <= 0:
                    continue
                dot = coef @ A[:, j]  # g_i^PC · g_j
                if dot < 0:
                    coef[j] -= dot / A[j, j]
            weights += coef
        return weights.to(G)
