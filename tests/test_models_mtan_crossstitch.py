"""MTAN and cross-stitch networks: ResNet variants, who owns what, α init, CLI training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.models import create
from densemtl.models.base import MultiTaskModel
from densemtl.models.crossstitch import CrossStitchUnit, cross_stitch_init

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
SEGNET = {"width": 0.125, "depth_stages": 3}
RESNET = {"backbone": "resnet18", "head_channels": 8}
VARIANTS = [
    ("mtan", SEGNET),
    ("mtan", RESNET),
    ("crossstitch", SEGNET),
    ("crossstitch", RESNET),
]
IDS = ["mtan-segnet", "mtan-resnet18", "crossstitch-segnet", "crossstitch-resnet18"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def ids(params: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("name", ["mtan", "crossstitch"])
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (32, 48)), (CITY, (32, 64))])
def test_resnet_variants_shapes_and_every_parameter_gets_a_gradient(
    name: str, tasks: dict[str, int], size: tuple[int, int]
) -> None:
    """The SegNet variants are the registered tiny ones (test_models.py); here the ResNet ones."""
    model = create(name, tasks, **RESNET)
    out = model(torch.rand(2, 3, *size))
    assert {t: tuple(o.shape) for t, o in out.items()} == {t: (2, c, *size) for t, c in tasks.items()}
    assert all(torch.isfinite(o).all() for o in out.values())
    sum(o.pow(2).mean() for o in out.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert not [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("name", ["mtan", "crossstitch"])
def test_segnet_variants_take_odd_sizes_and_full_nyuv2_resolution(name: str) -> None:
    model = create(name, NYU, **SEGNET).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 47))["normal"].shape == (1, 3, 33, 47)
        model = create(name, NYU, width=0.0625).eval()
        assert model(torch.rand(1, 3, 288, 384))["seg"].shape == (1, 13, 288, 384)


@pytest.mark.parametrize("name", ["mtan", "crossstitch"])
def test_too_small_input_is_explained(name: str) -> None:
    with pytest.raises(ValueError, match="depth_stages"):
        create(name, CITY, width=0.125, depth_stages=5)(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize(("name", "knobs"), VARIANTS, ids=IDS)
def test_shared_and_task_parameters_partition_the_model(name: str, knobs: dict[str, Any], task_partition: Any) -> None:
    model = create(name, NYU, **knobs)
    _, shared, _ = task_partition(model)
    if name == "mtan":
        for t in model.tasks:
            assert ids(model.task_parameters(t)) == ids(
                [*model.attention[t].parameters(), *model.heads[t].parameters()]
            )
    else:
        units = [m for m in model.modules() if isinstance(m, CrossStitchUnit)]
        assert units and all(id(u.alpha) in shared for u in units)
        for t in model.tasks:
            column = ids(model.column_parameters(t))
            assert ids(model.task_parameters(t)) < column
            assert column - ids(model.task_parameters(t)) <= shared


def perturb(params: list[nn.Parameter]) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn_like(p))


def outputs_after(model: MultiTaskModel, params: list[nn.Parameter], x: torch.Tensor) -> dict[str, bool]:
    """Which task outputs change when ``params`` are perturbed; shared parameters must not move."""
    shared_before = [p.detach().clone() for p in model.shared_parameters()]
    with torch.no_grad():
        before = model(x)
        perturb(params)
        after = model(x)
    for p, q in zip(model.shared_parameters(), shared_before, strict=True):
        assert torch.equal(p, q)
    return {t: not torch.equal(before[t], after[t]) for t in model.tasks}


def test_mtan_attention_and_head_of_one_task_change_only_that_task() -> None:
    model = create("mtan", NYU, **SEGNET).eval()
    x = torch.rand(2, 3, 32, 48)
    assert outputs_after(model, list(model.attention["depth"].parameters()), x) == {
        "seg": False,
        "depth": True,
        "normal": False,
    }
    assert outputs_after(model, list(model.heads["seg"].parameters()), x) == {
        "seg": True,
        "depth": False,
        "normal": False,
    }


def test_crossstitch_last_stage_is_private_and_earlier_stages_are_shared() -> None:
    model = create("crossstitch", NYU, **SEGNET).eval()
    x = torch.rand(2, 3, 32, 48)
    changed = outputs_after(model, model.task_parameters("depth"), x)
    assert changed == {"seg": False, "depth": True, "normal": False}
    # An earlier stage of depth's column reaches every task through the units: hence shared.
    early = list(model.columns["depth"].encoder[0].parameters())
    assert ids(early) <= ids(model.shared_parameters())
    with torch.no_grad():
        before = model(x)
        perturb(early)
        after = model(x)
    assert all(not torch.equal(before[t], after[t]) for t in NYU)


def test_cross_stitch_init_follows_the_paper() -> None:
    two = cross_stitch_init(2, 4, 0.9)
    assert two.shape == (2, 2, 4)
    torch.testing.assert_close(two[..., 0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    three = cross_stitch_init(3, 5, 0.9)
    expected = torch.full((3, 3), 0.05).fill_diagonal_(0.9)
    for c in range(5):
        torch.testing.assert_close(three[..., c], expected)
    torch.testing.assert_close(three.sum(1), torch.ones(3, 5))
    assert torch.equal(cross_stitch_init(1, 3, 0.9), torch.ones(1, 1, 3))
    model = create("crossstitch", CITY, **SEGNET, alpha_same=0.7)
    for unit in [m for m in model.modules() if isinstance(m, CrossStitchUnit)]:
        torch.testing.assert_close(unit.alpha[:, :, 0], torch.tensor([[0.7, 0.3], [0.3, 0.7]]))


def test_cross_stitch_unit_mixes_per_channel() -> None:
    unit = CrossStitchUnit(3, 2)
    with torch.no_grad():
        unit.alpha.copy_(torch.randn(3, 3, 2))
    xs = [torch.randn(2, 2, 3, 4) for _ in range(3)]
    out = unit(xs)
    for i in range(3):
        for c in range(2):
            manual = sum(unit.alpha[i, j, c] * xs[j][:, c] for j in range(3))
            torch.testing.assert_close(out[i][:, c], manual)


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("mtan", {"backbone": "vgg16"}),
        ("mtan", {"width": 0}),
        ("mtan", {"depth_stages": 2}),
        ("mtan", {"backbone": "resnet18", "width": 0.5}),
        ("mtan", {"head_channels": 32}),
        ("mtan", {"backbone": "resnet18", "head_channels": 0}),
        ("mtan", {"backbone": "resnet18", "output_stride": 32}),
        ("crossstitch", {"alpha_same": 1.5}),
        ("crossstitch", {"backbone": "resnet101"}),
        ("crossstitch", {"backbone": "resnet18", "depth_stages": 3}),
        ("crossstitch", {"pretrained": True}),
    ],
)
def test_bad_knobs_are_config_errors(name: str, knobs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        create(name, CITY, **knobs)


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
@pytest.mark.parametrize("name", ["mtan", "crossstitch"])
def test_trains_from_the_cli(name: str, method: str, tmp_path: Path) -> None:
    args = ["train", "--arch", name, "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
    args += ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1"]
    assert main([*args, "--method", method, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
