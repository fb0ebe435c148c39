"""The ``gramian`` mode: G = J Jᵀ from one vectorised backward pass, J never assembled.

For a method whose update is ``c(G) @ J`` (a :class:`~densemtl.balancing.base.GramianWeighting`)
only the T×T Gramian is needed to choose the coefficients. Following the way torchjd's autogram
engine differentiates (``vmap`` over the T one-hot cotangents of the loss vector), one backward
pass with batched cotangents gives, for every shared parameter p, its T per-task gradients
J_p (T × |p|). Then

    G = Σ_p J_p J_pᵀ,   c = w(G),   ∇_p = c @ J_p,

parameter by parameter: no (T × P) matrix is assembled or copied, and no Python loop over tasks
runs through the network. (The per-parameter blocks J_p are all alive when the vectorised pass
returns, so the saving against ``parameters`` mode is the concatenated copy and the T sets of
``.grad``, not J's size: 1.18 × EW peak memory against 1.28 × on ResNet-50.) Task-specific
parameters are left out of the vectorised pass (only their inputs' gradients flow through it)
and get their gradient, already scaled by c_t, from one
ordinary backward of Σ_t c_t L_t restricted to them, which only visits the heads.

Whether this beats T sequential backward passes depends on the device: the vectorised pass
runs every operation on a T-times larger batch of cotangents, which a GPU absorbs and a CPU
does not. ``densemtl speed --grad-mode gramian`` measures it; docs/speed.md has our numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def gramian(J: Tensor, chunk: int = 1 << 15) -> Tensor:
    """J Jᵀ, summed over column blocks of ``chunk``.

    One float32 matrix product over millions of columns accumulates its rounding error: for a
    ResNet-18's 11 M shared parameters, ``J @ J.T`` came out 0.3 % low on the diagonal against
    float64, while block sums (and the per-parameter sums of :func:`gramian_and_grads`) agree
    with float64 to 1e-5.
    """
    G = torch.zeros(J.shape[0], J.shape[0], dtype=J.dtype, device=J.device)
    for block in J.split(chunk, dim=1):
        G.addmm_(block, block.T)
    return G


def gramian_and_grads(
    objective: Sequence[Tensor],
    shared: Sequence[nn.Parameter],
    weights_from_gramian: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """(G, c, the combined gradient of each shared parameter) for the T task ``objective`` scalars.

    The graph is retained, so the caller can still backpropagate into the task-specific
    parameters. A shared parameter that no task reaches gets ``None``.
    """
    losses = torch.stack(list(objective))
    T = losses.numel()
    eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
    per_param = torch.autograd.grad(
        losses, list(shared), grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True
    )
    G = torch.zeros(T, T, dtype=losses.dtype, device=losses.device)
    for Jp in per_param:
        if Jp is not None:
            G += gramian(Jp.reshape(T, -1))
    c = weights_from_gramian(G).to(G)
    grads: list[Tensor | None] = []
    for Jp in per_param:
        grads.append(None if Jp is None else torch.tensordot(c, Jp, dims=1))
    return G, c, grads
