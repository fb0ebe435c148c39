"""timm backbones (``--arch-arg backbone=timm:<name>``) in hps, mtan, padnet and mtinet.

Small timm models with ``pretrained=False`` (nothing is ever downloaded here): a ResNet, a
ConvNeXt, an EfficientNet-family MobileNetV3, a Swin (NHWC features) and a ViT (stride 16 at
every level) shrunk through ``backbone_args``. For each architecture and backbone: predictions
for every task at odd input sizes, shared and task parameters that partition the model and reach
only their own losses, the output stride asked for. Then a train step through the CLI, the
pretrained weights from a local Hugging Face cache and the one-line errors.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

timm = pytest.importorskip("timm")

import huggingface_hub  # noqa: E402  (timm's dependency)
from huggingface_hub import constants as hf_constants  # noqa: E402

from densemtl.cli.list_cmd import print_timm_backbones  # noqa: E402
from densemtl.cli.main import main  # noqa: E402
from densemtl.errors import ConfigError  # noqa: E402
from densemtl.models import count_parameters, create  # noqa: E402
from densemtl.models.base import MultiTaskModel  # noqa: E402
from densemtl.models.timm_backbone import TimmFeatures  # noqa: E402

NYU = {"seg": 13, "depth": 1, "normal": 3}
TINY_SWIN = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
TINY_VIT = {"depth": 4, "embed_dim": 48, "num_heads": 3}
BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet": ("timm:resnet10t", {}),
    "convnext": ("timm:convnext_atto", {}),
    "mobilenetv3": ("timm:mobilenetv3_small_050", {}),
    "swin": ("timm:swin_tiny_patch4_window7_224", TINY_SWIN),
    "vit": ("timm:vit_tiny_patch16_224", TINY_VIT),
}
KNOBS = {
    "hps": {"head_channels": 8},
    "mtan": {"head_channels": 8},
    "padnet": {"channels": 8},
    "mtinet": {"channels": 8},
}
#: Output stride of the last feature map at output_stride=8: dilated where timm can.
STRIDE = {"resnet": 8, "convnext": 8, "mobilenetv3": 8, "swin": 32, "vit": 16}


def build(arch: str, family: str, **knobs: Any) -> MultiTaskModel:
    torch.manual_seed(0)
    name, args = BACKBONES[family]
    return create(arch, NYU, backbone=name, backbone_args=args, **{**KNOBS[arch], **knobs})


@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize("arch", KNOBS)
def test_every_architecture_on_every_family(
    arch: str, family: str, dense_batch: Callable[..., dict[str, Tensor]], task_partition: Any
) -> None:
    model = build(arch, family)
    for size in ((64, 80), (70, 90)):
        batch = dense_batch(NYU, size)
        out = model(batch["image"])
        assert list(out) == list(NYU)
        for t, c in NYU.items():
            assert out[t].shape == (2, c, *size) and torch.isfinite(out[t]).all()
    # The backbone is shared, every task's part reaches its own loss only, every parameter trains.
    _, shared, _ = task_partition(model)
    assert {id(p) for p in model.backbone.parameters()} <= shared
    losses = model.task_losses(out, batch)
    for t in model.tasks:
        own = model.task_parameters(t)
        others = [p for u in model.tasks if u != t for p in model.task_parameters(u)]
        grads = torch.autograd.grad(losses[t], [*own, *others], retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads[: len(own)]), t
        assert all(g is None or not g.any() for g in grads[len(own) :]), t
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    if arch != "mtinet":
        assert model.output_stride == STRIDE[family] == model.backbone.reductions[-1]


@pytest.mark.parametrize("family", ["convnext", "swin"])
def test_representation_mode_is_exact(family: str) -> None:
    """hps and PAD-Net keep one shared representation; below it act task parameters only."""
    for arch in ("hps", "padnet"):
        model = build(arch, family).eval()
        x = torch.rand(2, 3, 70, 90)
        with torch.no_grad():
            direct, rep = model(x), model.encode(x)
            split = model.decode(rep, (70, 90))
        assert rep.shape[1] == (model.backbone.channels[-1] if arch == "hps" else 3 * 8)
        for t in NYU:
            torch.testing.assert_close(direct[t], split[t], rtol=0, atol=0)


def test_output_stride_16_and_feature_levels() -> None:
    model = build("hps", "convnext", output_stride=16)
    assert model.output_stride == 16 and model.encode(torch.rand(1, 3, 64, 80)).shape[-2:] == (4, 5)
    mtinet = build("mtinet", "swin")
    assert mtinet.backbone.reductions == (4, 8, 16, 32) and mtinet.backbone.nhwc
    feats = mtinet.backbone_features(torch.rand(1, 3, 64, 80))
    assert [f.shape[1] for f in feats] == [24, 48, 96, 192] and feats[0].shape[-2:] == (16, 20)
    vit = build("mtan", "vit")
    assert vit.backbone.reductions == (16, 16, 16, 16) and vit.backbone.divisor == (16, 16)
    assert vit.backbone.input_size(70, 90) == (80, 96)
    assert count_parameters(vit)["shared"] < count_parameters(vit)["total"]


@pytest.mark.usefixtures("no_plots")
@pytest.mark.parametrize(("arch", "family", "method"), [("hps", "convnext", "pcgrad"), ("mtinet", "vit", "ew")])
def test_train_step_through_the_cli(arch: str, family: str, method: str, tmp_path: Path) -> None:
    name, args = BACKBONES[family]
    run = tmp_path / "run"
    knobs = [f"--arch-arg={k}={v}" for k, v in KNOBS[arch].items()]
    argv = ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1"]
    argv += ["--arch", arch, "--arch-arg", f"backbone={name}", *knobs, "--method", method, "--quiet"]
    argv += ["--arch-arg", "backbone_args=" + json.dumps(args)] if args else []
    assert main(["train", *argv, "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["metrics"]) == set(NYU)
    assert main(["eval", "--checkpoint", str(run), "--json", str(tmp_path / "eval.json")]) == 0


def fake_hub_cache(root: Path, repo: str, state: dict[str, Tensor]) -> Path:
    """A Hugging Face cache holding ``state`` as ``repo``'s model.safetensors (as the hub lays it out)."""
    from safetensors.torch import save_file

    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    path = folder / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and the hub offline: nothing can be downloaded."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_download)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    return tmp_path / "hub"


def _no_download(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a test tried to download")


def test_pretrained_uncached_is_one_line_naming_the_file(offline_cache: Path) -> None:
    with pytest.raises(ConfigError) as info:
        create("hps", NYU, backbone="timm:convnext_atto", pretrained=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("hps knob 'pretrained'")
    assert "timm/convnext_atto.d2_in1k" in message and "model.safetensors" in message
    assert str(offline_cache / "models--timm--convnext_atto.d2_in1k") in message
    assert "hf download timm/convnext_atto.d2_in1k" in message and "pretrained=false" in message
    assert "HF_HUB_OFFLINE" in message
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_pretrained_without_internet_says_so_at_once(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode on a machine that cannot reach the hub: one probe, then the one-line error."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", _unreachable)
    with pytest.raises(ConfigError) as info:
        create("padnet", NYU, backbone="timm:resnet10t", channels=8, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("padnet knob 'pretrained'")
    assert "huggingface.co cannot be reached (no route)" in message and "timm/resnet10t.c3_in1k" in message


def _unreachable(*args: Any, **kwargs: Any) -> None:
    raise OSError("no route")


def test_pretrained_loads_from_the_local_cache(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached weights load without the network, online mode or not."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", _no_download)
    torch.manual_seed(1)
    reference = timm.create_model("convnext_atto", pretrained=False)
    fake_hub_cache(offline_cache, "timm/convnext_atto.d2_in1k", reference.state_dict())
    model = create("mtan", NYU, backbone="timm:convnext_atto", head_channels=8, pretrained=True)
    loaded = dict(model.backbone.net.named_parameters())
    torch.testing.assert_close(loaded["stages_3.blocks.1.conv_dw.weight"], reference.stages[3].blocks[1].conv_dw.weight)


def test_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    cases: list[tuple[str, dict[str, Any], list[str]]] = [
        ("hps", {"backbone": "timm:convnext_attto"}, ["no model 'convnext_attto'", "did you mean timm:convnext_atto"]),
        ("crossstitch", {"backbone": "timm:resnet18"}, ["supported by hps, mtan, padnet, mtinet"]),
        ("hps", {"backbone": "resnet101"}, ["or timm:<name>"]),
        ("padnet", {"backbone": "resnet18", "backbone_args": {"depth": 2}}, ["applies to timm backbones"]),
        ("hps", {"backbone": "timm:resnet18", "backbone_args": {"depht": 2}}, ["timm cannot build resnet18", "depht"]),
        ("mtan", {"backbone": "timm:resnet18", "output_stride": 32}, ["'output_stride'"]),
    ]
    for arch, knobs, parts in cases:
        with pytest.raises(ConfigError) as info:
            create(arch, NYU, **knobs)
        message = str(info.value)
        assert "\n" not in message and all(p in message for p in parts), message
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"pip install 'densemtl\[timm\]'"):
        TimmFeatures("timm:resnet18", "hps", levels=1)


def test_list_names_the_syntax_and_families(capsys: pytest.CaptureFixture) -> None:
    print_timm_backbones(count=False)
    out = capsys.readouterr().out
    assert "--arch-arg backbone=timm:<name>" in out
    for family in ("resnet", "convnext", "efficientnet", "swin", "vit"):
        assert f"  {family}" in out


def test_sync_bn_keeps_timms_norm_and_activation_layers() -> None:
    """EfficientNet/MobileNet put the activation inside their batch norm (BatchNormAct2d): the
    CPU's global batch norm must keep it, or the network silently changes."""
    import timm

    from densemtl.models.sync_bn import GlobalBatchNormAct2d, convert_sync_bn

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", features_only=True, pretrained=False).eval()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)[-1]
    converted = convert_sync_bn(net, torch.device("cpu")).eval()
    assert any(isinstance(m, GlobalBatchNormAct2d) for m in converted.modules())
    torch.testing.assert_close(converted(x)[-1], before)
