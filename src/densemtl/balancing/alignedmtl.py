"""Aligned-MTL: make the task gradients orthogonal with equal norms, then combine them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import GramianWeighting

_SCALE_MODES = ("min", "median", "rmse")


@register("alignedmtl")
class AlignedMTL(GramianWeighting):
    r"""Aligned-MTL: align the principal components of the gradient system.

    Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023, https://arxiv.org/abs/2305.19000.

    With the eigendecomposition G = V diag(lambda) Vᵀ (keeping the R eigenvalues above
    lambda_max * T * machine-eps), the balance transform is B = sqrt(s) V diag(lambda^-1/2) Vᵀ and
    the aligned rows Ĵ = B J are orthogonal with equal norms sqrt(s) (the condition number of the
    system becomes 1). The update is Ĵᵀ p = Jᵀ (B p) with the preference vector p:

        w = B p,   out = Jᵀ w,   s = lambda_min ("min", the paper), median ("median")
                                       or mean ("rmse") of the kept eigenvalues.

    p defaults to uniform 1/T, torchjd's convention; the authors' code and LibMTL sum the aligned
    rows (p = 1), an update T times larger. With no eigenvalue above the threshold (J = 0), B = I.
    """

    def __init__(self, scale_mode: str = "min", pref_vector: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"AlignedMTL scale_mode must be one of {_SCALE_MODES}, got {scale_mode!r}")
        self.scale_mode = scale_mode
        self.pref_vector = None if pref_vector is None else torch.as_tensor(pref_vector, dtype=torch.float64)
        if self.pref_vector is not None and self.pref_vector.dim() != 1:
            raise ValueError(f"AlignedMTL pref_vector must be 1-D, got shape {tuple(self.pref_vector.shape)}")

    def balance_transform(self, G: Tensor) -> Tensor:
        """The T x T matrix B with B J orthogonal rows of equal norm (float64)."""
        # The rank threshold uses the input's precision: a float32 Gramian of a rank-deficient J has
        # spurious eigenvalues near lambda_max * 1e-7 that must not be "aligned" up to full size.
        eps = torch.finfo(G.dtype).eps
        G = G.detach().double()
        T = G.shape[0]
        if not bool(torch.isfinite(G).all()):
            return torch.eye(T, dtype=G.dtype, device=G.device)
        lam, V = torch.linalg.eigh(0.5 * (G + G.T))
        keep = lam > lam.max().clamp_min(0.0) * T * eps
        if not bool(keep.any()):
            return torch.eye(T, dtype=G.dtype, device=G.device)
        lam, V = lam[keep], V[:, keep]
        if self.scale_mode == "min":
            scale = lam.min()
        elif self.scale_mode == "median":
            scale = lam.median()
        else:
            scale = lam.mean()
        return scale.sqrt() * (V / lam.sqrt()) @ V.T

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        T = G.shape[0]
        if self.pref_vector is None:
            p = torch.full((T,), 1.0 / T, dtype=torch.float64, device=G.device)
        elif self.pref_vector.numel() != T:
            raise ValueError(f"AlignedMTL pref_vector has {self.pref_vector.numel()} entries for {T} tasks")
        else:
            p = self.pref_vector.to(G.device)
        return (self.balance_transform(G) @ p).to(G.dtype)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"AlignedMTL(scale_mode={self.scale_mode!r}, pref_vector={pref})"
