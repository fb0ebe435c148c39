"""Architectures: output shapes, gradients, shared/task parameter split, encode/decode, knobs."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from densemtl.errors import ConfigError
from densemtl.models import count_parameters, create
from densemtl.models.base import MultiTaskModel
from densemtl.models.hps import dilate_layer, expected_weights_path

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}

TINY: dict[str, dict[str, Any]] = {
    "segnet": {"width": 0.125, "depth_stages": 3},
    "hps": {"backbone": "resnet18", "head_channels": 16},
    "single": {"base": "segnet", "base_args": {"width": 0.125, "depth_stages": 3}},
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def build(name: str, tasks: dict[str, int]) -> MultiTaskModel:
    return create(name, tasks, **TINY[name])


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (32, 48)), (CITY, (32, 64)), (NYU, (40, 56))])
def test_output_shapes(name: str, tasks: dict[str, int], size: tuple[int, int]) -> None:
    model = build(name, tasks)
    out = model(torch.rand(2, 3, *size))
    assert list(out) == list(tasks)
    for t, c in tasks.items():
        assert out[t].shape == (2, c, *size)
        assert torch.isfinite(out[t]).all()


def test_segnet_odd_size_and_full_nyuv2_resolution() -> None:
    model = create("segnet", NYU, width=0.125, depth_stages=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 33, 47))
    assert out["seg"].shape == (1, 13, 33, 47)
    model = create("segnet", NYU, width=0.0625).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 288, 384))
    assert out["normal"].shape == (1, 3, 288, 384)


def test_segnet_too_small_input_is_explained() -> None:
    model = create("segnet", NYU, width=0.125, depth_stages=5)
    with pytest.raises(ValueError, match="depth_stages"):
        model(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name, NYU)
    out = model(torch.rand(2, 3, 32, 48))
    sum(o.pow(2).mean() for o in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero


@pytest.mark.parametrize("name", sorted(TINY))
def test_shared_and_task_parameters_partition_the_model(name: str, task_partition: Any) -> None:
    model = build(name, NYU)
    every, shared, _ = task_partition(model)
    if name == "single":
        assert not shared
        assert model.has_representation is False
    else:
        heads = {id(p) for p in model.heads.parameters()}
        assert shared == every - heads
        assert shared
    counts = count_parameters(model)
    assert counts["shared"] == sum(p.numel() for p in model.shared_parameters())


@pytest.mark.parametrize("name", ["segnet", "hps"])
def test_changing_a_head_changes_only_its_task(name: str) -> None:
    model = build(name, NYU).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        before = model(x)
        for p in model.heads["depth"].parameters():
            p.add_(0.5)
        after = model(x)
    assert not torch.allclose(before["depth"], after["depth"])
    assert torch.equal(before["seg"], after["seg"])
    assert torch.equal(before["normal"], after["normal"])


@pytest.mark.parametrize("name", ["segnet", "hps"])
def test_forward_is_decode_of_encode(name: str) -> None:
    model = build(name, NYU).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        direct = model(x)
        rep = model.encode(x)
        split = model.decode(rep, (32, 48))
    assert model.has_representation
    for t in NYU:
        torch.testing.assert_close(direct[t], split[t])
    if name == "segnet":
        assert rep.shape == (2, 8, 32, 48)


def test_single_has_no_representation() -> None:
    model = build("single", CITY)
    with pytest.raises(NotImplementedError):
        model.encode(torch.rand(2, 3, 32, 64))


@pytest.mark.parametrize(("output_stride", "expected"), [(8, (4, 6)), (16, (2, 3))])
def test_hps_output_stride(output_stride: int, expected: tuple[int, int]) -> None:
    model = create("hps", CITY, backbone="resnet18", head_channels=8, output_stride=output_stride)
    with torch.no_grad():
        rep = model.eval().encode(torch.rand(1, 3, 32, 48))
    assert rep.shape == (1, 512, *expected)


def conv_geometry(layer: nn.Module) -> list[tuple[Any, ...]]:
    return [(m.stride, m.dilation, m.padding) for m in layer.modules() if isinstance(m, nn.Conv2d)]


def test_hand_dilation_matches_torchvision_convention() -> None:
    """Our dilation for BasicBlock nets does to a ResNet-50 exactly what torchvision does."""
    native = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    ours = torchvision.models.resnet50()
    dilate_layer(ours.layer3, 1, 2)
    dilate_layer(ours.layer4, 2, 4)
    for name in ("layer3", "layer4"):
        assert conv_geometry(getattr(ours, name)) == conv_geometry(getattr(native, name))


def test_pretrained_without_cached_weights_is_a_config_error(monkeypatch, tmp_path) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ConfigError) as info:
        create("hps", CITY, backbone="resnet18", head_channels=8, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "resnet18-f37072fd.pth" in message
    assert "pretrained=False" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pretrained_loads_cached_weights(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    path = expected_weights_path(weights)
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    model = create("hps", CITY, backbone="resnet18", head_channels=8, pretrained=True)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.backbone.layer4[1].conv2.dilation == (4, 4)


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("segnet", {"widht": 0.5}),
        ("segnet", {"width": 0}),
        ("segnet", {"depth_stages": 2}),
        ("hps", {"backbone": "resnet101"}),
        ("hps", {"output_stride": 32}),
        ("hps", {"head_channels": 0}),
        ("hps", {"atrous_rates": 6}),
        ("single", {"base": "single"}),
        ("single", {"base": "unet"}),
        ("single", {"base_args": {"widht": 0.5}}),
    ],
)
def test_bad_knobs_are_config_errors(name: str, knobs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        create(name, CITY, **knobs)
