"""PAD-Net and MTI-Net: who owns which parameter, deep supervision through ``Predictions.aux``, CLI runs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.models import count_parameters, create
from densemtl.models.base import MultiTaskModel, Predictions
from densemtl.models.layers import upsample
from densemtl.tasks import create as get_task

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
NAMES = ("padnet", "mtinet")
TINY: dict[str, Any] = {"backbone": "resnet18", "channels": 8}
N_AUX = {"padnet": 1, "mtinet": 4}
# The modules whose outputs reach every task: shared, besides the backbone.
CROSS_TASK = {"padnet": ("features",), "mtinet": ("initial", "propagation")}
_CACHE: dict[tuple[str, int], MultiTaskModel] = {}
Batch = Callable[..., dict[str, Tensor]]


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


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (64, 64)), (CITY, (64, 128))])
def test_auxiliary_predictions_travel_with_the_output(name: str, tasks: dict[str, int], size: tuple[int, int]) -> None:
    model = build(name, tasks).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert isinstance(out, Predictions)
    assert list(out) == list(tasks) and list(out.aux) == list(tasks)  # iterating gives the tasks only
    for t, c in tasks.items():
        assert out[t].shape == (2, c, *size)
        assert len(out.aux[t]) == N_AUX[name] and all(a.shape[:2] == (2, c) for a in out.aux[t])
    assert not [k for k, v in vars(model).items() if isinstance(v, Tensor)]  # nothing kept on the model


@pytest.mark.parametrize("name", NAMES)
def test_intermediate_blocks_are_shared(name: str, task_partition: Any) -> None:
    model = build(name, NYU)
    every, shared, _ = task_partition(model)
    assert shared == every - {id(p) for p in model.heads.parameters()}
    for module in CROSS_TASK[name]:
        assert {id(p) for p in getattr(model, module).parameters()} <= shared
    assert count_parameters(model)["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_changing_a_task_changes_only_its_outputs(name: str) -> None:
    model = build(name, NYU).eval()
    x = torch.rand(2, 3, 32, 32)
    shared_before = [p.detach().clone() for p in model.shared_parameters()]
    with torch.no_grad():
        before = model(x)
        for p in model.task_parameters("depth"):
            p.add_(0.5)
        after = model(x)
    assert not torch.allclose(before["depth"], after["depth"])
    assert not torch.allclose(before.aux["depth"][0], after.aux["depth"][0])
    for t in ("seg", "normal"):
        assert torch.equal(before[t], after[t])
        assert all(torch.equal(a, b) for a, b in zip(before.aux[t], after.aux[t], strict=True))
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


def test_padnet_representation_is_the_concatenated_task_features() -> None:
    model = build("padnet", NYU).eval()
    with torch.no_grad():
        rep = model.encode(torch.rand(2, 3, 32, 48))
    assert rep.shape == (2, 3 * TINY["channels"], 4, 6)  # T·channels at output stride 8


@pytest.mark.parametrize("name", NAMES)
def test_extra_losses_are_the_task_losses_of_the_auxiliary_predictions(name: str, dense_batch: Batch) -> None:
    model = build(name, CITY)
    batch = dense_batch(CITY)
    preds = model(batch["image"])
    extra = model.extra_losses(preds, batch)
    assert set(extra) == set(CITY) and all(torch.isfinite(v) and v > 0 for v in extra.values())
    for t in CITY:
        target = batch[t]
        expected = sum(get_task(t).loss(upsample(a, target.shape[-2:]), target) for a in preds.aux[t])
        torch.testing.assert_close(extra[t], model.aux_weight * expected, rtol=0, atol=0)
    aux_params = [p for t in model.tasks for p in model.heads[t].aux.parameters()]
    grads = torch.autograd.grad(sum(extra.values()), aux_params, allow_unused=True, retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    again = model.extra_losses(preds, batch)  # nothing is consumed: the same predictions, the same losses
    assert all(torch.equal(again[t], extra[t]) for t in CITY)
    with pytest.raises(RuntimeError, match="Predictions"):
        model.extra_losses(dict(preds), batch)  # a plain copy has lost the auxiliary predictions


@pytest.mark.parametrize("name", NAMES)
def test_aux_weight_scales_the_extra_losses(name: str, dense_batch: Batch) -> None:
    batch = dense_batch(CITY)
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
        ("mtinet", {"aux_weight": float("inf")}),
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
