"""Hard parameter sharing: a dilated ResNet trunk and one DeepLabv3 ASPP head per task.

This is the multi-task network of most dense-MTL benchmarks since LibMTL and Nash-MTL: a
torchvision ResNet whose last stages trade stride for dilation (output stride 8 or 16, as in
Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
https://arxiv.org/abs/1706.05587), shared by all tasks, and per task torchvision's ``ASPP``
followed by a 3×3 conv-BN-ReLU and a 1×1 classifier (the layout of ``DeepLabHead``, with the
width as a knob). Predictions are upsampled bilinearly to the input size.

Images in [0, 1] are normalised with the ImageNet mean and std inside ``encode``. Outputs are
raw: segmentation logits, unconstrained depth, unnormalised normals.

``backbone="timm:<name>"`` replaces the ResNet with the last feature map of a timm model
(``densemtl.models.timm_backbone``), dilated to ``output_stride`` where timm can, at its native
stride otherwise (16 for ViTs, 32 for Swin), with ASPP rates scaled to the stride it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from densemtl.models import register
from densemtl.models._knobs import check_positive_int, check_positive_ints
from densemtl.models.backbones import (
    build_resnet,
    check_backbone,
    check_output_stride,
    register_imagenet_stats,
    stage_width,
)
from densemtl.models.base import MultiTaskModel
from densemtl.models.layers import light_head, upsample
from densemtl.models.timm_backbone import TimmFeatures, check_backbone_args, is_timm_backbone

DEFAULT_RATES: dict[int, tuple[int, ...]] = {8: (12, 24, 36), 16: (6, 12, 18)}


def default_rates(output_stride: int) -> tuple[int, ...]:
    """ASPP rates for features at ``output_stride``: DeepLabv3's at 8 and 16, scaled from 8's otherwise."""
    return DEFAULT_RATES.get(output_stride) or tuple(max(1, r * 8 // output_stride) for r in DEFAULT_RATES[8])


def aspp_head(in_channels: int, out_channels: int, rates: Sequence[int], channels: int) -> nn.Sequential:
    """DeepLabv3 head of width ``channels``: ASPP, 3×3 conv-BN-ReLU, 1×1 conv to ``out_channels``."""
    return nn.Sequential(ASPP(in_channels, rates, channels), *light_head(channels, out_channels, channels))


class HardSharingResNet(MultiTaskModel):
    """Shared dilated ResNet (``encode``: ImageNet-normalised image -> layer4) or timm backbone
    (its last feature map) + ASPP heads."""

    def __init__(
        self,
        task_channels: dict[str, int],
        backbone: str,
        output_stride: int,
        head_channels: int,
        atrous_rates: Sequence[int] | None,
        pretrained: bool,
        backbone_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task_channels)
        self.backbone_name = backbone
        if is_timm_backbone(backbone):
            self.backbone: nn.Module = TimmFeatures(
                backbone, "hps", levels=1, output_stride=output_stride, pretrained=pretrained, extra=backbone_args
            )
            in_channels, output_stride = self.backbone.channels[-1], self.backbone.reductions[-1]
        else:
            self.backbone = build_resnet(backbone, output_stride, pretrained)
            in_channels = stage_width(self.backbone.layer4)
            register_imagenet_stats(self)
        self.output_stride = output_stride
        rates = default_rates(output_stride) if atrous_rates is None else atrous_rates
        self.heads = nn.ModuleDict(
            {t: aspp_head(in_channels, n, rates, head_channels) for t, n in self.task_channels.items()}
        )

    def encode(self, x: Tensor) -> Tensor:
        """The backbone's last features, at 1/``output_stride`` of the input size."""
        if isinstance(self.backbone, TimmFeatures):
            return self.backbone(x)[-1]
        return self.backbone((x - self.mean) / self.std)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: upsample(self.heads[t](rep), size) for t in self.tasks}


@register("hps", tiny={"backbone": "resnet18", "head_channels": 16})
def hps(
    task_channels: dict[str, int],
    backbone: str = "resnet50",
    output_stride: int = 8,
    head_channels: int = 256,
    atrous_rates: Sequence[int] | None = None,
    pretrained: bool = False,
    backbone_args: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """Hard parameter sharing: dilated ResNet trunk, per-task DeepLabv3 ASPP heads.

    Args:
        task_channels: output channels per task.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (the papers' choice), or
            ``"timm:<name>"``: any timm model's last feature map (``pip install densemtl[timm]``).
        output_stride: 8 (layer3 and layer4 dilated) or 16 (layer4 dilated); timm models that
            cannot dilate (ViT, Swin) keep their own (16, 32): ``model.output_stride`` says which.
        head_channels: width of each ASPP head (256 in DeepLabv3; 16-64 for CPU runs).
        atrous_rates: ASPP dilation rates; default (12, 24, 36) at stride 8, (6, 12, 18) at 16,
            (3, 6, 9) at 32.
        pretrained: load ImageNet weights from torch's cache ($TORCH_HOME/hub/checkpoints), or a
            timm model's from the Hugging Face cache, downloading them if it can; raises
            ``ConfigError`` when they are unavailable.
        backbone_args: timm backbones only: extra ``timm.create_model`` keywords
            (e.g. ``{drop_path_rate: 0.1}``).

    ASPP's image-pooling branch holds a batch norm over 1×1 maps, so training needs batches of
    at least 2 images.
    """
    check_backbone("hps", backbone)
    check_output_stride("hps", output_stride)
    check_positive_int("hps", "head_channels", head_channels)
    extra = check_backbone_args("hps", backbone, backbone_args)
    rates = None if atrous_rates is None else check_positive_ints("hps", "atrous_rates", atrous_rates)
    return HardSharingResNet(task_channels, backbone, output_stride, head_channels, rates, bool(pretrained), extra)
