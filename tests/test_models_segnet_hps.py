"""SegNet, hps, the single-task baseline and the ResNet backbones; the corrected MTAN task head."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models import create
from densemtl.models.backbones import dilate_layer, expected_weights_path
from densemtl.models.layers import task_head
from densemtl.tasks import compute_losses

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
NARROW = {"width": 0.125, "depth_stages": 3}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- segnet ---------------------------------------------------------------------------------------
def test_segnet_odd_size_and_full_nyuv2_resolution() -> None:
    model = create("segnet", NYU, **NARROW).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 33, 47))
        assert out["seg"].shape == (1, 13, 33, 47)
        assert model.encode(torch.rand(2, 3, 32, 48)).shape == (2, 8, 32, 48)  # full resolution, filters[0]
        model = create("segnet", NYU, width=0.0625).eval()
        assert model(torch.rand(1, 3, 288, 384))["normal"].shape == (1, 3, 288, 384)


def test_segnet_too_small_input_is_explained() -> None:
    model = create("segnet", NYU, width=0.125, depth_stages=5)
    with pytest.raises(ValueError, match="depth_stages"):
        model(torch.rand(2, 3, 16, 16))


# -- the task head (correction of issue 10) -------------------------------------------------------
def test_task_head_is_affine_as_in_mtan() -> None:
    """MTAN's head has no nonlinearity between its convs: h(a + b) = h(a) + h(b) − h(0)."""
    head = task_head(4, 3)
    a, b = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(head(a + b), head(a) + head(b) - head(torch.zeros_like(a)))


def normal_head_step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(normal prediction, gradient norm of the normal head) after one backward of all losses."""
    model.zero_grad()
    preds = model(batch["image"])
    sum(compute_losses(preds, batch, model.tasks).values()).backward()
    grads = [p.grad for p in model.heads["normal"].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return preds["normal"].detach(), torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))


@pytest.mark.parametrize("arch", ["segnet", "vmsanet", "mtan"])
def test_narrow_normal_head_cannot_die(arch: str, dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    """With every channel of the 3×3 layer pushed negative, the old ReLU head predicted exactly 0
    everywhere (and normalising that gave gradients of ~1e12); MTAN's head still sees its input."""
    model = create(arch, NYU, **NARROW)
    batch = dense_batch(NYU, (32, 48))
    with torch.no_grad():
        model.heads["normal"][0].bias.fill_(-100.0)
    pred, grad_norm = normal_head_step(model, batch)
    assert pred.std(dim=(2, 3)).min() > 0  # depends on the pixel: the head is alive
    assert grad_norm < 1e3


def test_forced_zero_normal_prediction_has_bounded_gradients(dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    """A normal prediction that is exactly 0 (the head's output layer zeroed) still trains sanely."""
    model = create("segnet", NYU, **NARROW)
    batch = dense_batch(NYU, (32, 48))
    with torch.no_grad():
        model.heads["normal"][-1].weight.zero_()
        model.heads["normal"][-1].bias.zero_()
    pred, grad_norm = normal_head_step(model, batch)
    assert not pred.any()
    assert 0 < grad_norm < 1e3
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- hps and its backbones ------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("arch", "knobs"),
    [("hps", {"head_channels": 8}), ("padnet", {"channels": 8}), ("mtinet", {"channels": 8})],
)
def test_pretrained_without_cached_weights_is_a_config_error(
    arch: str, knobs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ConfigError) as info:
        create(arch, CITY, backbone="resnet18", pretrained=True, **knobs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{arch} knob 'pretrained'")
    assert str(tmp_path) in message and "resnet18-f37072fd.pth" in message
    assert "pretrained=False" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_pretrained_loads_cached_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    path = expected_weights_path(weights)
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    model = create("hps", CITY, backbone="resnet18", head_channels=8, pretrained=True)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.backbone.layer4[1].conv2.dilation == (4, 4)
    stages = create("hirmtl", CITY, backbone="resnet18", channels=4, pretrained=True).stages
    torch.testing.assert_close(stages[3][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert stages[3][1].conv2.dilation == (1, 1)


@pytest.mark.parametrize(
    ("name", "knobs"),
    [
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
