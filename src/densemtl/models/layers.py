"""Layers shared by the architectures: conv blocks, residual blocks, resizing, heads, attention masks.

Every builder here constructs its modules in a fixed order: models are built right after
``torch.manual_seed``, so the order in which parameters are created is part of every published
number. Change a builder only together with the tables it moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Convolution (no bias: the batch norm has one), batch norm, ReLU; size-preserving (odd kernels)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def residual_block(in_channels: int, out_channels: int) -> BasicBlock:
    """torchvision's ResNet ``BasicBlock``, with a 1×1 conv-BN projection when the width changes."""
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    return BasicBlock(in_channels, out_channels, downsample=downsample)


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize to ``size`` (H, W); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def xavier_init(module: nn.Module) -> None:
    """MTAN's initialisation: Xavier-normal convolutions, zero biases, unit-scale batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def task_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """MTAN's prediction head: a 3×3 conv, then a 1×1 conv to the task's channels (both with bias).

    Correction (issue 10): this head used to put a ReLU between the two convolutions, unlike MTAN
    (Liu et al., CVPR 2019; the authors' ``pred_task`` heads) and the VMSANet authors' code. With
    the ReLU, a narrow head whose channels are all off predicts exactly 0 everywhere, and the
    normals' unit normalisation then produced gradients of ~1e12 on the head's bias (seen at
    SegNet width 0.125). Without it the head is affine in its input, as in MTAN.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1),
        nn.Conv2d(in_channels, out_channels, 1),
    )


def light_head(in_channels: int, out_channels: int, channels: int) -> nn.Sequential:
    """DeepLabv3's head without its ASPP: 3×3 conv-BN-ReLU of ``channels``, 1×1 conv to the outputs.

    One flat ``Sequential`` (indices 0-3), so that it can follow an ASPP in the same container.
    """
    return nn.Sequential(*conv_bn_relu(in_channels, channels), nn.Conv2d(channels, out_channels, 1))


def prediction_head(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    """PAD-Net's and MTI-Net's final head: ``conv_bn_relu`` to ``channels``, then a 1×1 conv.

    The layers of ``light_head``, nested as (conv-BN-ReLU, conv): the two models' checkpoints
    name their parameters this way.
    """
    return nn.Sequential(conv_bn_relu(in_channels, channels), nn.Conv2d(channels, out_channels, 1))


def attention_mask(in_channels: int, out_channels: int, hidden: int | None = None) -> nn.Sequential:
    """MTAN's task attention mask ``h∘g``, with values in (0, 1).

    1×1 conv-BN-ReLU to ``hidden`` (default ``out_channels``), 1×1 conv-BN, sigmoid (Liu, Johns
    and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
    https://arxiv.org/abs/1803.10704): at every level each task multiplies the shared features
    by such a mask computed from them and from its own attended features of the previous level.
    """
    hidden = out_channels if hidden is None else hidden
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Sigmoid(),
    )
