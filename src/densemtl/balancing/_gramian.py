"""One Gramian normaliser for the methods whose weights do not depend on the gradients' scale.

Most Gramian weightings solve a small problem on G = J Jᵀ whose solution is scale-free (or
scales in a known way): dividing G by a scale s first keeps every intermediate O(1) at any
gradient scale, from 1e-8 to 1e8, and in float32 as in float64.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import numpy as np
from torch import Tensor

#: "trace": s = Σ_t G_tt (the squared norms summed); "mean_diagonal": s = Σ_t G_tt / T;
#: "mean_norm": s = (mean_t ‖g_t‖)², the square of the mean gradient norm (SDMGrad)
Scale = Literal["trace", "mean_diagonal", "mean_norm"]
Matrix = TypeVar("Matrix", Tensor, np.ndarray)


def gramian_scale(G: Matrix, by: Scale = "trace") -> Tensor | float:
    """The scale s of the float64 Gramian ``G`` (a torch tensor, giving a 0-d tensor on its
    device, or a NumPy array, giving a float).

    The trace is summed by the array's own library (``np.trace`` for an array, a sum of the
    diagonal for a tensor): the two orders differ in the last bit from T = 5 tasks on, and each
    method keeps the one it was written and tested with. For the same reason a tensor is divided
    by a tensor (on CUDA, division by a Python float is a multiplication by its reciprocal).
    """
    if isinstance(G, np.ndarray):
        if by == "mean_norm":
            return float(np.sqrt(np.clip(np.diagonal(G), 0.0, None)).mean() ** 2)
        trace = float(np.trace(G))
        return trace / G.shape[0] if by == "mean_diagonal" and G.shape[0] else trace
    if by == "mean_norm":
        return G.diagonal().clamp_min(0.0).sqrt().mean() ** 2
    trace_t = G.diagonal().sum()
    return trace_t / G.shape[0] if by == "mean_diagonal" and G.shape[0] else trace_t


def normalise_gramian(G: Matrix, by: Scale = "trace") -> tuple[Matrix, float | None]:
    """(G / s, s) for the scale s of :func:`gramian_scale`; (G, None) when s is not a positive
    finite number (a zero, empty or non-finite Gramian), which each method handles its way.

    ``G`` is float64 already, on the device and in the library the method computes with.
    """
    s = gramian_scale(G, by)
    value = float(s)
    if not (value > 0.0 and math.isfinite(value)):
        return G, None
    return G / s, value
