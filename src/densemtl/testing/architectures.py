"""The conformance of an architecture: the contract of ``MultiTaskModel``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from densemtl.testing._common import NYU, SIZE, ConformanceError, dense_batch, require, resolve


# -- architectures --------------------------------------------------------------------------------------
def check_architecture(
    arch: object,
    *,
    knobs: Mapping[str, Any] | None = None,
    task_channels: Mapping[str, int] | None = None,
    size: tuple[int, int] = SIZE,
) -> None:
    """The contract of ``MultiTaskModel`` for ``arch`` (a registered name, a factory taking
    ``task_channels`` and ``knobs``, or a class): predictions for every task at the input size; the
    shared and per-task parameters partition the model (each task owns some); every parameter gets
    a gradient; a task's parameters reach only its own loss; ``decode(encode(x)) == forward(x)``
    where there is one shared representation, with only task parameters below it; the same model
    from the same seed."""
    from densemtl.models import MODELS

    label, make = resolve(MODELS, arch, knobs)
    channels = dict(task_channels or NYU)

    def build(seed: int = 0) -> Any:
        torch.manual_seed(seed)
        return make(task_channels=dict(channels))

    check_predictions(build(), label, channels, size)
    check_partition(build(), label)
    check_gradients(build(), label, channels, size)
    check_representation(build(), label, channels, size)
    check_seeded(build, label, size)


def check_predictions(model: Any, label: str, channels: Mapping[str, int], size: tuple[int, int]) -> None:
    """``model(x)`` is ``{task: (B, C_task, H, W)}`` at the input size, finite, for every task."""
    out = model(torch.rand(2, 3, *size))
    require(list(out) == list(channels), label, f"forward gave tasks {list(out)}, not {list(channels)}")
    for t, c in channels.items():
        require(tuple(out[t].shape) == (2, c, *size), label, f"{t}: shape {tuple(out[t].shape)}, not {(2, c, *size)}")
        require(torch.isfinite(out[t]).all(), label, f"{t}: non-finite predictions")


def check_partition(model: Any, label: str) -> tuple[set[int], set[int], list[set[int]]]:
    """Every task owns some parameters, none is both shared and a task's or two tasks', and together
    they are all the parameters. Returns the ids (every, shared, per task)."""
    every = {id(p) for p in model.parameters()}
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in model.tasks]
    for t, own in zip(model.tasks, per_task, strict=True):
        require(own, label, f"task {t!r} owns no parameter (name the heads self.heads, or override task_parameters)")
        require(not own & shared, label, f"a parameter of task {t!r} is also shared")
    for i, own in enumerate(per_task):
        for u, other in zip(model.tasks[i + 1 :], per_task[i + 1 :], strict=True):
            require(not own & other, label, f"tasks {model.tasks[i]!r} and {u!r} own the same parameter")
    require(shared.union(*per_task) == every, label, "shared and task parameters are not all the parameters")
    return every, shared, per_task


def check_gradients(model: Any, label: str, channels: Mapping[str, int], size: tuple[int, int]) -> None:
    """Every parameter gets a non-zero gradient of the summed losses; ``task_parameters(t)`` get
    one from L_t and none from another task's loss (the engine's premise)."""
    batch = dense_batch(channels, size)
    sum(model.task_losses(model(batch["image"]), batch).values()).backward()
    none = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    require(not none, label, f"no gradient reaches {', '.join(none[:3])}{' …' if len(none) > 3 else ''}")
    model.zero_grad(set_to_none=True)
    losses = model.task_losses(model(batch["image"]), batch)
    for i, t in enumerate(model.tasks):
        own = model.task_parameters(t)
        others = [p for u in model.tasks if u != t for p in model.task_parameters(u)]
        last = i == len(model.tasks) - 1
        grads = torch.autograd.grad(losses[t], [*own, *others], retain_graph=not last, allow_unused=True)
        require(any(g is not None and g.abs().sum() > 0 for g in grads[: len(own)]), label,
                 f"task {t!r}'s loss does not reach its own parameters")  # fmt: skip
        require(all(g is None or not g.any() for g in grads[len(own) :]), label,
                 f"task {t!r}'s loss reaches another task's parameters")  # fmt: skip


def check_representation(model: Any, label: str, channels: Mapping[str, int], size: tuple[int, int]) -> None:
    """With ``has_representation``: ``decode(encode(x))`` is ``forward(x)`` exactly, and below
    ``encode`` only task parameters act; without: ``encode`` raises NotImplementedError."""
    model = model.eval()
    x = torch.rand(2, 3, *size)
    if not model.has_representation:
        try:
            model.encode(x)
        except NotImplementedError:
            return
        raise ConformanceError(f"{label}: has_representation is False but encode() works")
    with torch.no_grad():
        direct, split = model(x), model.decode(model.encode(x), size)
    for t in channels:
        require(torch.equal(direct[t], split[t]), label, f"decode(encode(x)) differs from forward(x) for {t!r}")
    for t, aux in getattr(direct, "aux", {}).items():
        for a, b in zip(aux, split.aux[t], strict=True):
            require(torch.equal(a, b), label, f"decode(encode(x)) gives other auxiliary predictions for {t!r}")
    model.train()
    batch = dense_batch(channels, size)
    rep = model.encode(batch["image"]).detach().requires_grad_(True)
    total = sum(model.task_losses(model.decode(rep, size), batch).values())
    grads = torch.autograd.grad(total, [rep, *model.shared_parameters()], allow_unused=True)
    require(grads[0] is not None and grads[0].abs().sum() > 0, label, "the losses do not reach encode()'s output")
    require(all(g is None for g in grads[1:]), label, "a shared parameter acts after encode() (in decode)")


def check_seeded(build: Callable[[int], Any], label: str, size: tuple[int, int]) -> None:
    """Built twice from one seed: the same parameters and the same predictions; another seed differs."""
    a, b, other = build(0), build(0), build(1)
    sa, sb, so = a.state_dict(), b.state_dict(), other.state_dict()
    require(list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa), label, "one seed, two models")
    require(any(not torch.equal(sa[k], so[k]) for k in sa), label, "another seed gives the same model")
    x = torch.rand(2, 3, *size)
    outs = []
    for model in (a, b):
        torch.manual_seed(7)  # the forward may draw too (dropout)
        outs.append(model(x))
    require(all(torch.equal(outs[0][t], outs[1][t]) for t in outs[0]), label, "one seed, two predictions")
