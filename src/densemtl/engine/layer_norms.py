"""GradNorm's input: ‖∇_W L_t‖ for each task at one shared layer W, found and computed cheaply.

W defaults to the last shared layer in computation order, found by a breadth-first search of the
first step's autograd graph (registration order is no guide: a SegNet registers the decoder
stage that runs first last).

On a model with a single shared representation r = encode(x) (``has_representation``) the
engine takes the step in two halves, as in representation mode: per task, one backward pass
through its head gives δ_t = ∂L_t/∂r and the head's gradient; then

    ∇_W L_t = (∂r/∂W)ᵀ δ_t   (one short vector-Jacobian product from r down to W, per task),

and, for a weighting whose combined loss is Σ_t w_t L_t, the whole update is one backward of r
with cotangent Σ_t w_t δ_t plus each head's gradient times w_t: the heads are traversed once
per task in all, as in an EW step, instead of T extra times (:func:`split_weighted_backward`).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor, nn

_KERNEL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def kernel_ids(model: nn.Module) -> set[int]:
    """The ids of ``model``'s convolution and linear weights."""
    return {id(m.weight) for m in model.modules() if isinstance(m, _KERNEL_LAYERS)}


def last_shared_kernel(
    named_shared: list[tuple[str, nn.Parameter]], kernels: set[int], roots: list[Tensor]
) -> tuple[str | None, nn.Parameter | None]:
    """Of the shared convolution and linear weights (``kernels``: their ids; any shared parameter
    with two or more dimensions if none is shared), the one fewest autograd nodes away from
    ``roots`` (the losses, or the shared representation)."""
    shared = [(n, p) for n, p in named_shared if p.dim() >= 2]
    candidates = {id(p): (n, p) for n, p in shared if id(p) in kernels} or {id(p): (n, p) for n, p in shared}
    frontier = deque(r.grad_fn for r in roots if r.grad_fn is not None)
    seen: set[object] = set()
    while frontier:
        node = frontier.popleft()
        if node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in candidates:
            return candidates[id(variable)]
        frontier.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return None, None


def _grad_norms(outputs: list[Tensor], cotangents: list[Tensor | None], W: nn.Parameter) -> Tensor:
    """‖∂⟨output_t, cotangent_t⟩/∂W‖ for each t (0 where W does not reach the output)."""
    norms = torch.zeros(len(outputs), dtype=outputs[0].dtype, device=outputs[0].device)
    for t, (out, cot) in enumerate(zip(outputs, cotangents, strict=True)):
        (g,) = torch.autograd.grad(out, W, grad_outputs=cot, retain_graph=True, allow_unused=True)
        if g is not None:
            norms[t] = torch.linalg.vector_norm(g)
    return norms.detach()


def layer_grad_norms(parts: list[Tensor], W: nn.Parameter) -> Tensor:
    """‖∂L_t/∂W‖ for each task: T backward passes through the graph above W only."""
    return _grad_norms(parts, [None] * len(parts), W)


def head_passes(
    parts: list[Tensor], rep_in: Tensor, own: list[list[nn.Parameter]]
) -> tuple[list[Tensor], list[tuple[Tensor | None, ...]]]:
    """Per task: δ_t = ∂L_t/∂r (zeros if the task does not read r) and the head's gradients."""
    deltas, head_grads = [], []
    for t, loss in enumerate(parts):
        grads = torch.autograd.grad(loss, [rep_in, *own[t]], retain_graph=True, allow_unused=True)
        deltas.append(grads[0] if grads[0] is not None else torch.zeros_like(rep_in))
        head_grads.append(grads[1:])
    return deltas, head_grads


def split_layer_norms(rep: Tensor, deltas: list[Tensor], W: nn.Parameter) -> Tensor:
    """‖(∂r/∂W)ᵀ δ_t‖ for each task."""
    return _grad_norms([rep] * len(deltas), list(deltas), W)


def split_weighted_backward(
    rep: Tensor,
    deltas: list[Tensor],
    head_grads: list[tuple[Tensor | None, ...]],
    own: list[list[nn.Parameter]],
    weights: Tensor,
) -> None:
    """``.grad`` of backward(Σ_t w_t L_t) from the per-task pieces: heads get w_t times their
    gradient, the encoder one backward of r with cotangent Σ_t w_t δ_t."""
    w = [float(x) for x in weights.detach().reshape(-1)]
    cotangent = sum((wt * d for wt, d in zip(w, deltas, strict=True)), torch.zeros_like(rep))
    rep.backward(cotangent)
    for params, grads, wt in zip(own, head_grads, w, strict=True):
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g * wt if p.grad is None else p.grad + g * wt
