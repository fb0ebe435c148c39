"""IMTL-G: the combination whose projections on every unit task gradient are equal."""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing._gramian import normalise_gramian
from densemtl.balancing.base import GramianWeighting, Requirements


@register("imtl")
class IMTLG(GramianWeighting):
    r"""Impartial multi-task learning, gradient balance (IMTL-G).

    Find weights α with Σ_t α_t = 1 such that d = Σ_t α_t g_t has the same projection on every
    unit gradient u_t = g_t / ‖g_t‖: u_tᵀ d = k for all t. The paper's closed form, with
    D = [g_1 − g_2; …; g_1 − g_T] and U = [u_1 − u_2; …; u_1 − u_T], is

        α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹,   α_1 = 1 − Σ_{t≥2} α_t.

    In terms of the Gramian, u_tᵀ d = (Gα)_t / ‖g_t‖ = k means Gα = k n with n_t = √G_tt, so

        α = G⁻¹ n / (1ᵀ G⁻¹ n),

    which is what we compute (after normalising G by its trace). For a singular G (dependent or
    zero rows) G⁻¹ is the pseudo-inverse, as in torchjd's generalisation (Quinton & Rey,
    arXiv:2406.16232): a zero row gets weight 0 and equal rows share their weight. When
    1ᵀG⁺n vanishes (e.g. two opposite gradients) no impartial direction exists and the weights
    are 0. For T = 2 the common projection k = 1/(1ᵀG⁻¹n) is ≥ 0, so d conflicts with neither
    task. Only the gradient part of IMTL is here; IMTL-L (loss scaling) is a loss weighting.
    The paper computes it at the shared representation too: the representation is its preferred source.

    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
    ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr (no arXiv version)
    """

    requirements = Requirements(sources=("representation", "jacobian", "gramian"))

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        A, scale = normalise_gramian(G.detach().to("cpu", torch.float64))
        if T == 0 or scale is None:
            return torch.zeros(T, dtype=G.dtype, device=G.device)
        norms = A.diagonal().clamp(min=0.0).sqrt()
        # G is only as exact as the dtype it was computed in: eigenvalues below that relative
        # noise are treated as zero rather than inverted.
        rtol = torch.finfo(G.dtype).eps ** 0.5 if G.dtype.is_floating_point else 1e-8
        v = torch.linalg.pinv(A, hermitian=True, rtol=rtol) @ norms
        total = v.sum()
        if not bool(total.abs() > 1e-12):
            return torch.zeros(T, dtype=G.dtype, device=G.device)
        return (v / total).to(G)
