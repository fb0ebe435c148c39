"""GradDrop: keep, coordinate by coordinate, only the gradients of one randomly chosen sign."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import Aggregator


@register("graddrop")
class GradDrop(Aggregator):
    r"""Gradient sign dropout (GradDrop, Algorithm 1 of the paper, lines 10-15).

    For every coordinate p, the gradient positive sign purity is

        P_p = ½ (1 + Σ_i J_ip / Σ_i |J_ip|)   (P_p = ½ where the column is zero),

    then one U_p ~ Uniform(0, 1) is drawn, and task i keeps coordinate p when
    M_ip = [P_p > U_p][J_ip > 0] + [P_p < U_p][J_ip < 0]. The update is

        d_p = Σ_i (ℓ_i + (1 − ℓ_i) M_ip) J_ip,

    with leak ℓ_i ∈ [0, 1] (``leak``, one number for every task or one per task; 0 in the paper's
    main experiments). The paper's monotone f(P) is the identity here.

    Interpretation: the paper applies GradDrop at a layer of activations, with the purity computed
    from the gradients summed over the batch. We apply it to the Jacobian of the shared parameters
    given to ``aggregate`` (so each parameter coordinate is one "unit"), which is how LibMTL and
    torchjd use it on parameter gradients. It needs the sign of every entry of J, hence an
    ``Aggregator`` that needs the whole Jacobian. The U_p are drawn from ``self.generator``.

    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep
    Multitask Models with Gradient Sign Dropout", NeurIPS 2020, https://arxiv.org/abs/2010.06808
    """

    def __init__(self, leak: float | Sequence[float] = 0.0) -> None:
        super().__init__()
        values = [float(leak)] if isinstance(leak, (int, float)) else [float(v) for v in leak]
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"leak must lie in [0, 1], got {leak!r}")
        self.leak = leak if isinstance(leak, (int, float)) else tuple(values)

    def aggregate(self, J: Tensor) -> Tensor:
        T, P = J.shape
        if T == 0 or P == 0:
            return torch.zeros(P, dtype=J.dtype, device=J.device)
        if isinstance(self.leak, tuple):
            if len(self.leak) != T:
                raise ValueError(f"GradDrop has {len(self.leak)} leak values but J has {T} rows")
            leak = torch.tensor(self.leak, dtype=J.dtype, device=J.device).unsqueeze(1)
        else:
            leak = torch.full((T, 1), float(self.leak), dtype=J.dtype, device=J.device)
        magnitude = J.abs().sum(dim=0)
        ratio = torch.where(magnitude > 0, J.sum(dim=0) / torch.where(magnitude > 0, magnitude, 1), 0)
        purity = 0.5 * (1.0 + ratio)
        rng = self.rng()
        u = torch.rand(P, generator=rng, dtype=J.dtype, device=rng.device).to(J.device)
        mask = ((purity > u) & (J > 0)) | ((purity < u) & (J < 0))
        return ((leak + (1.0 - leak) * mask.to(J.dtype)) * J).sum(dim=0)

    def __repr__(self) -> str:
        return f"GradDrop(leak={self.leak!r})"
