"""torchvision ResNet backbones, dilated or plain, with ImageNet weights from torch's cache.

- ``build_resnet``: a ResNet up to ``layer4`` whose last stages trade stride for dilation
  (output stride 8 or 16, as in Chen et al., "Rethinking Atrous Convolution for Semantic Image
  Segmentation", https://arxiv.org/abs/1706.05587): hps, MTAN and cross-stitch on ResNets, PAD-Net.
- ``resnet_stages``: the plain ResNet split into stem and four stages at strides 4, 8, 16, 32:
  MTI-Net and HirMTL.
- ``check_backbone``: a ResNet name or, for hps, mtan, padnet and mtinet, ``timm:<name>``
  (any timm model; built by ``densemtl.models.timm_backbone``).

Pretrained weights (IMAGENET1K_V1, as in the papers) come through torchvision's weights API from
``$TORCH_HOME/hub/checkpoints``, downloaded there when possible. Images in [0, 1] are normalised
with ImageNet's mean and std by the model (``register_imagenet_stats``).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock

from densemtl.errors import ConfigError
from densemtl.models._knobs import check_choice
from densemtl.models.timm_backbone import TIMM_ARCHS, check_timm_backbone, is_timm_backbone

BACKBONES: dict[str, tuple[str, str]] = {
    # name -> (torchvision builder, weights enum); all IMAGENET1K_V1, as in the papers.
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
}
OUTPUT_STRIDES = (8, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STEM = ("conv1", "bn1", "relu", "maxpool")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def check_backbone(arch: str, backbone: object, choices: tuple[str, ...] = tuple(BACKBONES)) -> None:
    """``backbone`` must name one of ``choices`` (default: the ResNets) or, for the architectures
    in ``TIMM_ARCHS``, a timm model as ``"timm:<name>"`` (checked against timm's registry)."""
    if is_timm_backbone(backbone):
        check_timm_backbone(arch, backbone)  # type: ignore[arg-type]
        return
    if arch in TIMM_ARCHS and not any(type(backbone) is type(c) and backbone == c for c in choices):
        raise ConfigError(
            f"{arch} knob 'backbone' must be one of {', '.join(choices)} or timm:<name> (a timm model, "
            f"with densemtl[timm] installed), got {backbone!r}"
        )
    check_choice(arch, "backbone", backbone, choices)


def check_output_stride(arch: str, output_stride: object) -> None:
    """``output_stride`` must be 8 or 16."""
    check_choice(arch, "output_stride", output_stride, OUTPUT_STRIDES)


def stage_width(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last block's last convolution)."""
    last = stage[-1]  # type: ignore[index]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def register_imagenet_stats(module: nn.Module) -> None:
    """Give ``module`` non-persistent ``mean``/``std`` buffers (1, 3, 1, 1) of ImageNet's statistics."""
    module.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)


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


def load_imagenet_weights(net: ResNet, backbone: str, arch: str = "hps") -> None:
    """Load ``backbone``'s ImageNet weights from torch's cache (downloading them if possible).

    A missing or unreadable file is a ``ConfigError`` on ``arch``'s ``pretrained`` knob that
    says where the file was expected.
    """
    weights = getattr(torchvision.models, BACKBONES[backbone][1]).IMAGENET1K_V1
    path = expected_weights_path(weights)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
        net.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{arch} knob 'pretrained': ImageNet weights for {backbone} were expected at {path} "
            f"and could not be loaded or downloaded ({reason}); place the file there or use "
            "pretrained=False to train from scratch"
        ) from None


def _torchvision_resnet(backbone: str, pretrained: bool, arch: str, dilate: list[bool] | None = None) -> ResNet:
    """torchvision's ``backbone`` (random init, then ImageNet weights if ``pretrained``)."""
    builder = getattr(torchvision.models, BACKBONES[backbone][0])
    net = builder(weights=None) if dilate is None else builder(weights=None, replace_stride_with_dilation=dilate)
    if pretrained:
        load_imagenet_weights(net, backbone, arch)
    return net


def build_resnet(backbone: str, output_stride: int, pretrained: bool, arch: str = "hps") -> nn.Sequential:
    """A torchvision ResNet up to ``layer4`` (no pooling, no classifier) at ``output_stride``.

    Modules keep torchvision's names (``conv1`` ... ``layer4``). Bottleneck nets are dilated by
    torchvision, BasicBlock nets by ``dilate_layer`` to the same convention.
    """
    dilate = [False, output_stride == 8, True] if backbone == "resnet50" else None
    net = _torchvision_resnet(backbone, pretrained, arch, dilate)
    if isinstance(net.layer1[0], BasicBlock):
        if output_stride == 8:
            dilate_layer(net.layer3, 1, 2)
            dilate_layer(net.layer4, 2, 4)
        else:
            dilate_layer(net.layer4, 1, 2)
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in (*STEM, *STAGES)))


def resnet_stages(
    backbone: str, pretrained: bool, arch: str, *, named_stem: bool = False
) -> tuple[nn.Sequential, nn.ModuleList, list[int]]:
    """A plain (undilated) ResNet as (stem, [layer1..layer4], their output widths).

    The stem (conv1, bn1, relu, maxpool) has stride 4 and the stages add strides 2 each (8, 16,
    32). ``named_stem`` keeps torchvision's names for the stem's modules (``stem.conv1``)
    instead of indices (``stem.0``); each architecture's checkpoints use one or the other.
    """
    net = _torchvision_resnet(backbone, pretrained, arch)
    if named_stem:
        stem = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in STEM))
    else:
        stem = nn.Sequential(*(getattr(net, name) for name in STEM))
    stages = nn.ModuleList([getattr(net, name) for name in STAGES])
    return stem, stages, [stage_width(s) for s in stages]
