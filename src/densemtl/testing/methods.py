"""The conformance of a balancing method: what every registered aggregator and loss weighting meets."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from densemtl.testing._common import accepts, require, resolve

#: the (T, P) shapes of J an aggregator is checked at
SHAPES = ((1, 5), (2, 7), (3, 4), (5, 50))


def rand(T: int, P: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A seeded T x P Jacobian."""
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def degenerate_jacobians() -> dict[str, Tensor]:
    """Three-task Jacobians a method must survive: equal rows, a zero row, opposite rows, low rank,
    all zero, one column."""
    equal = rand(3, 9, 1)
    equal[1] = equal[0]
    zero_row = rand(3, 9, 2)
    zero_row[1] = 0.0
    return {
        "equal_rows": equal,
        "zero_row": zero_row,
        "opposite": torch.stack([rand(1, 9, 3)[0], -rand(1, 9, 3)[0]]),
        "low_rank": rand(5, 2, 4) @ rand(2, 9, 5),
        "all_zero": torch.zeros(3, 9, dtype=torch.float64),
        "one_column": rand(3, 1, 6),
    }


def check_method(method: object, *, knobs: Mapping[str, Any] | None = None, num_tasks: int = 3) -> None:
    """The checks every registered method passes, for ``method`` (a registered name, a class or
    factory, or an object): a declaration it honours (:func:`densemtl.balancing.base.protocol_gap`);
    an aggregator gives a finite (P,) update of J's dtype for several shapes and for degenerate
    Jacobians (zero for J = 0), resumes exactly from its ``state_dict``, and, where it says so, is
    ``weights_from_gramian(G) @ J`` or ``row_weights() @ J``; a loss weighting's ``combine`` gives a
    scalar whose gradient in the losses is the finite positive weights it reports, and it resumes
    exactly. ``num_tasks`` is given to a factory that takes it."""
    from densemtl.balancing import METHODS
    from densemtl.balancing.base import BalancingMethod, protocol_gap

    label, make0 = resolve(METHODS, method, knobs)
    sized = accepts(make0, method, METHODS, "num_tasks")

    def make(T: int = num_tasks, seed: int = 0) -> Any:
        m = make0(num_tasks=T) if sized else make0()
        require(isinstance(m, BalancingMethod), label, f"made a {type(m).__name__}, not a BalancingMethod")
        m.set_generator(torch.Generator().manual_seed(seed))
        return m

    first = make()
    gap = protocol_gap(first)
    require(gap == "", label, gap)
    if first.requirements.uses_losses:
        check_loss_weighting(make, label, num_tasks)
    else:
        check_aggregator(make, label, sized, num_tasks)


def check_aggregator(make: Callable[..., Any], label: str, sized: bool, num_tasks: int) -> None:
    """The aggregator half of :func:`check_method` (``make(T, seed)`` makes a fresh one)."""
    shapes = [(num_tasks, 4), (num_tasks, 50)] if sized else SHAPES
    for T, P in shapes:
        for dtype in (torch.float32, torch.float64):
            m = make(T)
            for seed in range(3):
                out = m(rand(T, P, seed, dtype))
                require(isinstance(out, Tensor) and tuple(out.shape) == (P,) and out.dtype == dtype, label,
                        f"aggregate of a {T}x{P} {dtype} J gave {_kind(out)}, not ({P},) {dtype}")  # fmt: skip
                require(torch.isfinite(out).all(), label, f"non-finite update for a {T}x{P} {dtype} J")
    if not sized or num_tasks == 3:
        for case, J in degenerate_jacobians().items():
            if sized and J.shape[0] != num_tasks:
                continue
            for scale in (1.0, 1e-8, 1e8):
                out = make(J.shape[0])(scale * J)
                require(torch.isfinite(out).all(), label, f"non-finite update for the {case} J x {scale:g}")
            if case == "all_zero":
                require(torch.allclose(make(3)(J), torch.zeros_like(J[0])), label, "J = 0 gives a non-zero update")
    T = num_tasks
    a = make(T, seed=3)
    for seed in range(3):
        a(rand(T, 10, seed))
    b = make(T)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    b.set_generator(torch.Generator().set_state(a.generator.get_state()))
    J = rand(T, 10, 99)
    require(torch.equal(a(J), b(J)), label, "a copy loaded from its state_dict gives another update")
    if make(T).requirements.from_gramian:
        for seed, n in enumerate(sorted({T} if sized else {2, T})):
            J = rand(n, 8, seed)
            w = make(n).weights_from_gramian(J @ J.T)
            require(isinstance(w, Tensor) and tuple(w.shape) == (n,), label,
                    f"weights_from_gramian gave {_kind(w)}, not ({n},)")  # fmt: skip
            require(torch.allclose(make(n)(J), w.to(J) @ J, rtol=1e-10, atol=1e-12), label,
                    "declares the 'gramian' source but its update is not weights_from_gramian(J Jᵀ) @ J")  # fmt: skip
    m = make(T)
    for seed in range(3):
        J = rand(T, 8, seed)
        out, w = m(J), m.row_weights()
        if w is not None:
            require(torch.allclose(out, w.to(J) @ J, rtol=1e-10, atol=1e-12), label,
                    "row_weights() are not the w of its update wᵀJ")  # fmt: skip


def loss_weighting_steps(method: Any, part: list[Tensor], first_epoch: int) -> list[Tensor]:
    """Steps as the trainer takes them: the hooks the method asks for, ``combine`` and backward, a
    plain SGD step on the method's own parameters, the re-evaluated losses, an epoch every 2."""
    out = []
    T = len(part[0])
    norms = torch.Generator().manual_seed(first_epoch)
    for i, losses in enumerate(part):
        x = losses.clone().requires_grad_(True)
        if method.requirements.layer_grad_norms is not None:
            method.observe_grad_norms(0.1 + torch.rand(T, generator=norms))
        scalar, w = method.combine(x)
        scalar.backward()
        with torch.no_grad():
            for p in method.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        if method.requirements.reevaluate:
            method.observe_losses_after_step(0.9 * losses)
        out += [scalar.detach(), w]
        if i % 2 == 1:
            method.end_epoch(first_epoch + i // 2, torch.stack(part[i - 1 : i + 1]).mean(0))
    return out


def check_loss_weighting(make: Callable[..., Any], label: str, T: int) -> None:
    """The loss-weighting half of :func:`check_method`."""
    method = make(T)
    for _ in range(2):  # stateful methods move from the second call on
        losses = torch.linspace(0.5, 2.0, T).requires_grad_(True)
        if method.requirements.layer_grad_norms is not None:
            method.observe_grad_norms(torch.linspace(0.2, 0.4, T))
        scalar, w = method.combine(losses)
        require(isinstance(scalar, Tensor) and scalar.dim() == 0 and scalar.requires_grad, label,
                f"combine gave {_kind(scalar)}, not a scalar in the graph")  # fmt: skip
        require(isinstance(w, Tensor) and tuple(w.shape) == (T,) and not w.requires_grad, label,
                f"combine's weights are {_kind(w)}, not a detached ({T},) tensor")  # fmt: skip
        require(
            torch.isfinite(w).all() and (w > 0).all(), label, f"combine's weights {w.tolist()} are not finite and > 0"
        )
        scalar.backward()
        require(losses.grad is not None and torch.allclose(losses.grad, w), label,
                "combine's gradient in the losses is not the weights it reports")  # fmt: skip
        for p in method.parameters():
            require(
                p.grad is not None and torch.isfinite(p.grad).all(), label, "a parameter of its own gets no gradient"
            )
            p.grad = None
        if method.requirements.reevaluate:
            method.observe_losses_after_step(0.5 * losses.detach())
    g = torch.Generator().manual_seed(0)
    seq = [0.2 + torch.rand(T, generator=g) for _ in range(12)]
    a = make(T)
    loss_weighting_steps(a, seq[:6], 0)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(T)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    if a.generator is not None:  # the run's generator is the trainer's to restore, not the method's
        b.set_generator(torch.Generator().set_state(a.generator.get_state()))
    for x, y in zip(loss_weighting_steps(a, seq[6:], 3), loss_weighting_steps(b, seq[6:], 3), strict=True):
        require(torch.equal(x, y), label, "a copy loaded from its state_dict (weights_only) does not resume exactly")


def _kind(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return "None" if value is None else f"a {type(value).__name__}"
