"""Every registered architecture, at the tiny knobs it declares once at its ``@register`` line.

The contract of ``MultiTaskModel``: predictions for every task at the input size, shared and
task parameters that partition the model, task parameters that reach their own task's loss
only, every parameter trained, ``decode(encode(x)) == forward(x)`` where there is a single
shared representation, and the same model from the same seed. Architecture-specific behaviour
is tested in ``test_models_<arch>.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.models import MODELS, available, count_parameters, create
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import default_task_channels

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
ARCHS = available()


def build(name: str, tasks: dict[str, int] = NYU, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return create(name, tasks, **MODELS.tiny(name))


def losses_of(model: MultiTaskModel, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each task's loss plus its deep-supervision loss, as the engine forms them."""
    return model.task_losses(preds, batch)


def test_every_architecture_declares_tiny_knobs() -> None:
    assert ARCHS
    for name in ARCHS:
        assert MODELS.tiny(name), f"{name} declares no tiny test knobs at its @register line"


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (32, 48)), (CITY, (40, 56)), ({"depth": 1}, (33, 47))])
def test_predictions_for_every_task_at_input_size(name: str, tasks: dict[str, int], size: tuple[int, int]) -> None:
    model = build(name, tasks)
    out = model(torch.rand(2, 3, *size))
    assert list(out) == list(tasks)
    for t, c in tasks.items():
        assert out[t].shape == (2, c, *size)
        assert torch.isfinite(out[t]).all()


@pytest.mark.parametrize("name", ARCHS)
def test_shared_and_task_parameters_partition_the_model(name: str, task_partition: Any) -> None:
    model = build(name)
    every, shared, _ = task_partition(model)
    assert bool(shared) == (name != "single")  # only the single-task baseline shares nothing
    counts = count_parameters(model)
    assert counts == {
        "shared": sum(p.numel() for p in model.shared_parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }


@pytest.mark.parametrize("name", ARCHS)
def test_every_parameter_gets_a_gradient(name: str, dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    model = build(name)
    batch = dense_batch(NYU, (32, 48))
    sum(losses_of(model, model(batch["image"]), batch).values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert not [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("name", ARCHS)
def test_task_parameters_reach_only_their_own_loss(name: str, dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    """The engine's premise: L_t (with its extra loss) has no gradient in another task's parameters."""
    model = build(name)
    batch = dense_batch(NYU, (32, 48))
    losses = losses_of(model, model(batch["image"]), batch)
    for i, t in enumerate(model.tasks):
        own = model.task_parameters(t)
        others = [p for u in model.tasks if u != t for p in model.task_parameters(u)]
        grads = torch.autograd.grad(
            losses[t], [*own, *others], retain_graph=i < len(model.tasks) - 1, allow_unused=True
        )
        assert any(g is not None and g.abs().sum() > 0 for g in grads[: len(own)]), t
        assert all(g is None or not g.any() for g in grads[len(own) :]), t


@pytest.mark.parametrize("name", ARCHS)
def test_decode_of_encode_is_forward(name: str, dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    """Where there is one shared representation, the heads act on it with task parameters only."""
    model = build(name).eval()
    x = torch.rand(2, 3, 32, 48)
    if not model.has_representation:
        with pytest.raises(NotImplementedError):
            model.encode(x)
        return
    with torch.no_grad():
        direct = model(x)
        split = model.decode(model.encode(x), (32, 48))
    for t in NYU:
        torch.testing.assert_close(direct[t], split[t], rtol=0, atol=0)
    for t, aux in getattr(direct, "aux", {}).items():
        for a, b in zip(aux, split.aux[t], strict=True):  # type: ignore[attr-defined]
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Below encode only task parameters act: the representation mode's gradient is exact.
    model.train()
    batch = dense_batch(NYU, (32, 48))
    rep = model.encode(batch["image"]).detach().requires_grad_(True)
    total = sum(losses_of(model, model.decode(rep, (32, 48)), batch).values())
    grads = torch.autograd.grad(total, [rep, *model.shared_parameters()], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert all(g is None for g in grads[1:])


@pytest.mark.parametrize("name", ARCHS)
def test_same_seed_same_model(name: str) -> None:
    a, b, other = build(name), build(name), build(name, seed=1)
    sa, sb, so = a.state_dict(), b.state_dict(), other.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], so[k]) for k in sa)
    x = torch.rand(2, 3, 32, 48)
    outs = []
    for model in (a, b):
        torch.manual_seed(7)  # the forward may draw too (hps's ASPP has dropout)
        outs.append(model(x))
    assert all(torch.equal(outs[0][t], outs[1][t]) for t in NYU)


@pytest.mark.parametrize("name", ARCHS)
def test_unknown_knob_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="widht"):
        create(name, CITY, widht=0.5)


def test_default_tasks_come_from_the_task_registry() -> None:
    model = create("segnet", **MODELS.tiny("segnet"))
    assert model.task_channels == default_task_channels()
