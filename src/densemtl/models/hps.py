"""Hard parameter sharing: a dilated ResNet trunk and one DeepLabv3 ASPP head per task.

This is the multi-task network of most dense-MTL benchmarks since LibMTL and Nash-MTL: a
torchvision ResNet whose last stages trade stride for dilation (output stride 8 or 16, as in
Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
https://arxiv.org/abs/1706.05587), shared by all tasks, and per task torchvision's ``ASPP``
followed by a 3×3 conv-BN-ReLU and a 1×1 classifier (the layout of ``DeepLabHead``, with the
width as a knob). Predictions are upsampled bilinearly to the input size.

Images in [0, 1] are normalised with the ImageNet mean and std inside ``encode``. Outputs are
raw: segmentation logits, unconstrained depth, unnormalised normals.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation.deeplabv3 import ASPP

from densemtl.errors import ConfigError
from densemtl.models import register
from densemtl.models.base import MultiTaskModel

BACKBONES: dict[str, tuple[str, str]] = {
    # name -> (torchvision builder, weights enum); all IMAGENET1K_V1, as in the papers.
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
}
DEFAULT_RATES: dict[int, tuple[int, ...]] = {8: (12, 24, 36), 16: (6, 12, 18)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stage_width(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last block's last convolution)."""
    last = stage[-1]  # type: ignore[index]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def register_imagenet_stats(module: nn.Module) -> None:
    """Give ``module`` non-persistent ``mean``/``std`` buffers (1, 3, 1, 1) of ImageNet's statistics."""
    module.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)


def check_output_stride(arch: str, output_stride: object) -> None:
    if output_stride not in DEFAULT_RATES:
        raise ConfigError(f"{arch} knob 'output_stride' must be 8 or 16, got {output_stride!r}")


def check_head_channels(arch: str, head_channels: object) -> None:
    if not isinstance(head_channels, int) or isinstance(head_channels, bool) or head_channels < 1:
        raise ConfigError(f"{arch} knob 'head_channels' must be a positive integer, got {head_channels!r}")


def dilate_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3×3 convolutions, in place.

    Follows torchvision's ``replace_stride_with_dilation`` convention so that BasicBlock nets
    (which torchvision refuses to dilate) match Bottleneck nets: the first block keeps the
    previous dilation and loses its stride, the later blocks use ``dilation``. Weight shapes are
    unchanged, so ImageNet weights still load.
    """
    for i, block in enumerate(layer):
        d = previous_dilation if i == 0 else dilation
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.stride, m.dilation, m.padding = (1, 1), (d, d), (d, d)
        downsample = getattr(block, "downsample", None)
        if downsample is not None:
            downsample[0].stride = (1, 1)


def expected_weights_path(weights: torchvision.models.WeightsEnum) -> str:
    """Where torch's cache looks for ``weights`` ($TORCH_HOME/hub/checkpoints/<file>)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def load_imagenet_weights(net: ResNet, backbone: str) -> None:
    """Load ``backbone``'s ImageNet weights from torch's cache (downloading them if possible)."""
    weights = getattr(torchvision.models, BACKBONES[backbone][1]).IMAGENET1K_V1
    path = expected_weights_path(weights)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
        net.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"hps knob 'pretrained': ImageNet weights for {backbone} were expected at {path} "
            f"and could not be loaded or downloaded ({reason}); place the file there or use "
            "pretrained=False to train from scratch"
        ) from None


def build_resnet(backbone: str, output_stride: int, pretrained: bool) -> nn.Sequential:
    """A torchvision ResNet up to ``layer4`` (no pooling, no classifier) at ``output_stride``."""
    builder = getattr(torchvision.models, BACKBONES[backbone][0])
    dilate = [False, output_stride == 8, True]
    if backbone == "resnet50":
        net = builder(weights=None, replace_stride_with_dilation=dilate)
    else:
        net = builder(weights=None)
    if pretrained:
        load_imagenet_weights(net, backbone)
    if isinstance(net.layer1[0], BasicBlock):
        if output_stride == 8:
            dilate_layer(net.layer3, 1, 2)
            dilate_layer(net.layer4, 2, 4)
        else:
            dilate_layer(net.layer4, 1, 2)
    keep = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in keep))


def aspp_head(in_channels: int, out_channels: int, rates: Sequence[int], channels: int) -> nn.Sequential:
    """DeepLabv3 head of width ``channels``: ASPP, 3×3 conv-BN-ReLU, 1×1 conv to ``out_channels``."""
    return nn.Sequential(
        ASPP(in_channels, rates, channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out_channels, 1),
    )


class HardSharingResNet(MultiTaskModel):
    """Shared dilated ResNet (``encode``: ImageNet-normalised image -> layer4) + ASPP heads."""

    def __init__(
        self,
        task_channels: dict[str, int],
        backbone: str,
        output_stride: int,
        head_channels: int,
        atrous_rates: Sequence[int],
        pretrained: bool,
    ) -> None:
        super().__init__(task_channels)
        self.backbone_name = backbone
        self.output_stride = output_stride
        self.backbone = build_resnet(backbone, output_stride, pretrained)
        in_channels = stage_width(self.backbone.layer4)
        self.heads = nn.ModuleDict(
            {t: aspp_head(in_channels, n, atrous_rates, head_channels) for t, n in self.task_channels.items()}
        )
        register_imagenet_stats(self)

    def encode(self, x: Tensor) -> Tensor:
        """layer4 features at 1/``output_stride`` of the input size."""
        return self.backbone((x - self.mean) / self.std)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {
            t: F.interpolate(self.heads[t](rep), size=size, mode="bilinear", align_corners=False)
            for t in self.tasks
        }


@register("hps")
def hps(
    task_channels: dict[str, int],
    backbone: str = "resnet50",
    output_stride: int = 8,
    head_channels: int = 256,
    atrous_rates: Sequence[int] | None = None,
    pretrained: bool = False,
) -> MultiTaskModel:
    """Hard parameter sharing: dilated ResNet trunk, per-task DeepLabv3 ASPP heads.

    Args:
        task_channels: output channels per task.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (the papers' choice).
        output_stride: 8 (layer3 and layer4 dilated) or 16 (layer4 dilated).
        head_channels: width of each ASPP head (256 in DeepLabv3; 16-64 for CPU runs).
        atrous_rates: ASPP dilation rates; default (12, 24, 36) at stride 8, (6, 12, 18) at 16.
        pretrained: load ImageNet weights from torch's cache ($TORCH_HOME/hub/checkpoints),
            downloading them if it can; raises ``ConfigError`` when they are unavailable.

    ASPP's image-pooling branch holds a batch norm over 1×1 maps, so training needs batches of
    at least 2 images.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"hps knob 'backbone' must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    check_output_stride("hps", output_stride)
    check_head_channels("hps", head_channels)
    rates = DEFAULT_RATES[output_stride] if atrous_rates is None else atrous_rates
    if (
        not isinstance(rates, (list, tuple))
        or not rates
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates)
    ):
        raise ConfigError(f"hps knob 'atrous_rates' must be positive integers, got {atrous_rates!r}")
    return HardSharingResNet(
        task_channels, backbone, output_stride, head_channels, tuple(rates), bool(pretrained)
    )
