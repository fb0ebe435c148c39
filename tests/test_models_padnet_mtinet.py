"""PAD-Net and MTI-Net: shapes, gradients, who owns which parameter, deep supervision, CLI runs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.models import count_parameters, create
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import compute_losses

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
NAMES = ("padnet", "mtinet")
TINY: dict[str, Any] = {"backbone": "resnet18", "channels": 8}
N_AUX = {"padnet": 1, "mtinet": 4}
# The modules whose outputs reach every task: shared, besides the backbone.
CROSS_TASK = {"padnet": ("features",), "mtinet": ("initial", "propagation")}
_CACHE: dict[tuple[str, int], MultiTaskModel] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These models are small: a second intra-op thread buys little, and on a shared, busy CPU its
    # synchronisation made each step 5-10x slower in CPU time than one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, tasks: dict[str, int], **knobs: Any) -> MultiTaskModel:
    """A fresh tiny model (a copy of a cached one when no extra knob is given)."""
    if knobs:
        torch.manual_seed(0)
        return create(name, tasks, **TINY, **knobs)
    key = (name, len(tasks))
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = create(name, tasks, **TINY)
    return copy.deepcopy(_CACHE[key])


def make_batch(tasks: dict[str, int], size: tuple[int, int] = (32, 32), n: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(n, 3, *size, generator=g)}
    if "seg" in tasks:
        batch["seg"] = torch.randint(-1, tasks["seg"], (n, *size), generator=g)
    if "depth" in tasks:
        batch["depth"] = torch.rand(n, 1, *size, generator=g) + 0.5
    if "normal" in tasks:
        batch["normal"] = torch.nn.functional.normalize(torch.randn(n, 3, *size, generator=g), dim=1)
    return batch


def task_losses(model: MultiTaskModel, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each task's loss plus its deep-supervision loss, as the engine forms them."""
    preds = model(batch["image"])
    losses = compute_losses(preds, batch, model.tasks)
    for t, extra in model.extra_losses(preds, batch).items():
        losses[t] = losses[t] + extra
    return losses


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (64, 64)), (CITY, (64, 128))])
def test_output_shapes(name: str, tasks: dict[str, int], size: tuple[int, int]) -> None:
    model = build(name, tasks).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert list(out) == list(tasks)
    aux = model.auxiliary_predictions()  # type: ignore[attr-defined]
    for t, c in tasks.items():
        assert out[t].shape == (2, c, *size)
        assert torch.isfinite(out[t]).all()
        assert len(aux[t]) == N_AUX[name] and all(a.shape[:2] == (2, c) for a in aux[t])


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name, NYU)
    sum(task_losses(model, make_batch(NYU)).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero


@pytest.mark.parametrize("name", NAMES)
def test_shared_and_task_parameters_partition_the_model(name: str, task_partition: Any) -> None:
    model = build(name, NYU)
    every, shared, _ = task_partition(model)
    assert shared
    assert shared == every - {id(p) for p in model.heads.parameters()}
    for module in CROSS_TASK[name]:
        assert {id(p) for p in getattr(model, module).parameters()} <= shared
    counts = count_parameters(model)
    assert counts["shared"] == sum(p.numel() for p in model.shared_parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_task_parameters_reach_only_their_own_loss(name: str) -> None:
    """The definition the engine relies on: L_t (with its extra loss) has no gradient in u's parameters."""
    model = build(name, NYU)
    losses = task_losses(model, make_batch(NYU))
    for i, t in enumerate(model.tasks):
        others = [p for u in model.tasks if u != t for p in model.task_parameters(u)]
        grads = torch.autograd.grad(losses[t], others, retain_graph=i < len(model.tasks) - 1, allow_unused=True)
        assert all(g is None or not g.any() for g in grads), t


@pytest.mark.parametrize("name", NAMES)
def test_changing_a_task_changes_only_its_outputs(name: str) -> None:
    model = build(name, NYU).eval()
    x = torch.rand(2, 3, 32, 32)
    shared_before = [p.detach().clone() for p in model.shared_parameters()]
    with torch.no_grad():
        before, aux_before = model(x), model.auxiliary_predictions()  # type: ignore[attr-defined]
        for p in model.task_parameters("depth"):
            p.add_(0.5)
        after, aux_after = model(x), model.auxiliary_predictions()  # type: ignore[attr-defined]
    assert not torch.allclose(before["depth"], after["depth"])
    assert not torch.allclose(aux_before["depth"][0], aux_after["depth"][0])
    for t in ("seg", "normal"):
        assert torch.equal(before[t], after[t])
        assert all(torch.equal(a, b) for a, b in zip(aux_before[t], aux_after[t], strict=True))
    for p, q in zip(model.shared_parameters(), shared_before, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_intermediate_features_are_cross_task(name: str) -> None:
    """Why the intermediate blocks are shared: one task's block moves the other tasks' predictions."""
    model = build(name, NYU).eval()
    x = torch.rand(2, 3, 32, 32)
    blocks = model.features if name == "padnet" else model.initial[0]
    with torch.no_grad():
        before = model(x)
        for p in blocks["seg"].parameters():
            p.add_(0.5)
        after = model(x)
    assert not torch.allclose(before["depth"], after["depth"])


def test_padnet_forward_is_decode_of_encode() -> None:
    model = build("padnet", NYU).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        direct = model(x)
        rep = model.encode(x)
        split = model.decode(rep, (32, 48))
    assert model.has_representation
    assert rep.shape == (2, 3 * TINY["channels"], 4, 6)
    for t in NYU:
        torch.testing.assert_close(direct[t], split[t])


def test_padnet_decode_uses_no_shared_parameter() -> None:
    """What makes the engine's representation mode exact: below ``encode`` only task parameters act."""
    model = build("padnet", NYU)
    batch = make_batch(NYU)
    rep = model.encode(batch["image"]).detach().requires_grad_(True)
    preds = model.decode(rep, (32, 32))
    losses = compute_losses(preds, batch, model.tasks)
    extra = model.extra_losses(preds, batch)
    total = sum(losses.values()) + sum(extra.values())
    grads = torch.autograd.grad(total, [rep, *model.shared_parameters()], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert all(g is None for g in grads[1:])


def test_mtinet_has_no_single_representation() -> None:
    model = build("mtinet", CITY)
    assert not model.has_representation
    with pytest.raises(NotImplementedError):
        model.encode(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("name", NAMES)
def test_extra_losses(name: str) -> None:
    model = build(name, CITY)
    batch = make_batch(CITY)
    preds = model(batch["image"])
    extra = model.extra_losses(preds, batch)
    assert set(extra) == set(CITY) and all(torch.isfinite(v) and v > 0 for v in extra.values())
    aux_params = [p for t in model.tasks for p in model.heads[t].aux.parameters()]
    grads = torch.autograd.grad(sum(extra.values()), aux_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(RuntimeError, match="latest forward"):
        model.extra_losses(preds, batch)  # already consumed
    model(batch["image"])
    assert copy.deepcopy(model).auxiliary_predictions() == {}  # kept predictions are not copied
    with pytest.raises(RuntimeError, match="latest forward"):
        model.extra_losses(preds, batch)  # not this forward's predictions


@pytest.mark.parametrize("name", NAMES)
def test_aux_weight_scales_the_extra_losses(name: str) -> None:
    batch = make_batch(CITY)
    base = build(name, CITY)
    heavy = build(name, CITY)
    heavy.aux_weight = 2.5  # type: ignore[assignment]
    with torch.no_grad():
        a = base.extra_losses(base(batch["image"]), batch)
        b = heavy.extra_losses(heavy(batch["image"]), batch)
    for t in CITY:
        torch.testing.assert_close(b[t], 2.5 * a[t])
    off = build(name, CITY, aux_weight=0.0)
    assert off.extra_losses(off(batch["image"]), batch) == {}


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("padnet", {"backbone": "resnet101"}),
        ("padnet", {"channels": 0}),
        ("padnet", {"output_stride": 32}),
        ("padnet", {"aux_weight": -1.0}),
        ("mtinet", {"backbone": "hrnet"}),
        ("mtinet", {"channels": 2.5}),
        ("mtinet", {"aux_weight": float("nan")}),
        ("mtinet", {"output_stride": 8}),
    ],
)
def test_bad_knobs_are_config_errors(name: str, knobs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=name):
        create(name, CITY, **knobs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_trains_from_the_cli(name: str, method: str, tmp_path: Path) -> None:
    args = ["train", "--arch", name, "--arch-arg", "backbone=resnet18", "--arch-arg", "channels=8"]
    args += ["--size", "64x64", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1"]
    assert main([*args, "--method", method, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
