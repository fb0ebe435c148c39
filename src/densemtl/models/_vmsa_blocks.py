"""VMSANet's two modules: channel attention (CACM) and the variable multi-scale module (VMSM).

From Ji, Sun, Meng, Pang and Tian, "Variable multi-scale attention fusion network and adaptive
correcting gradient optimization for multi-task learning", Pattern Recognition 162 (2025) 111423
(https://doi.org/10.1016/j.patcog.2025.111423), as specified in METHODS.md §1. Our versions
differ from the authors' code in two places: every strided VMSM branch is fused (theirs drops
two), and the CACM's reduced widths are clamped to at least one channel so narrow nets work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Callable[[int], nn.Module]


def leaky(channels: int) -> nn.Module:
    """The CACM's activation: LeakyReLU with slope 0.1 (``channels`` unused)."""
    return nn.LeakyReLU(0.1)


def prelu(channels: int) -> nn.Module:
    """The VMSM's activation: PReLU with one slope per channel."""
    return nn.PReLU(channels)


def reduced(channels: int, ratio: int) -> int:
    """``channels // ratio``, but at least 1 (narrow nets would otherwise get zero-width convs)."""
    return max(1, channels // ratio)


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    activation: Activation,
    *,
    kernel_size: int = 1,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> nn.Sequential:
    """Convolution (no bias, 'same' padding for odd kernels), batch norm, activation."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        activation(out_channels),
    )


def separable_conv(in_channels: int, out_channels: int, activation: Activation, *, stride: int = 1) -> nn.Sequential:
    """Depthwise-separable 3×3 convolution: depthwise 3×3 (``stride``) then pointwise 1×1, each with BN + act."""
    return nn.Sequential(
        conv_bn_act(in_channels, in_channels, activation, kernel_size=3, stride=stride, groups=in_channels),
        conv_bn_act(in_channels, out_channels, activation),
    )


class ChannelAttention(nn.Module):
    """CACM: Y = X ⊙ σ(Σ_b logits_b(X)) with five branches of channel logits (B,C,1,1).

    Branch 0: global average pool → 1×1 conv C→C/``pool_reduction`` → GELU → 1×1 conv → C.
    Branches r in ``reductions``: depthwise-separable 3×3 conv C→C/r (BN + LeakyReLU 0.1 after
    each conv) → global average pool → GELU → 1×1 conv C/r→C. Reduced widths are at least 1.
    """

    def __init__(self, channels: int, *, pool_reduction: int = 16, reductions: Sequence[int] = (2, 4, 8, 16)) -> None:
        super().__init__()
        hidden = reduced(channels, pool_reduction)
        self.pool_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )
        self.conv_branches = nn.ModuleList(
            nn.Sequential(
                separable_conv(channels, reduced(channels, r), leaky),
                nn.AdaptiveAvgPool2d(1),
                nn.GELU(),
                nn.Conv2d(reduced(channels, r), channels, 1),
            )
            for r in reductions
        )

    def branches(self) -> list[nn.Module]:
        """The five branches, pooling branch first."""
        return [self.pool_branch, *self.conv_branches]

    def forward(self, x: Tensor) -> Tensor:
        logits = self.pool_branch(x)
        for branch in self.conv_branches:
            logits = logits + branch(x)
        return x * torch.sigmoid(logits)


class VariableMultiScale(nn.Module):
    """VMSM: a 3×3 stem, then local, strided multi-scale and image-pooling branches, fused by 1×1.

    With d = max(1, out/2): x = conv3×3-BN-PReLU (in→out); b1 = 1×1 conv-BN-PReLU → d; for s in
    ``scales``: dilated 3×3 conv-BN-PReLU (dilation s) → d, a depthwise-separable conv with stride s
    (BN + LeakyReLU 0.1 after each conv, as in the authors' code; padding 1 where theirs has none,
    so maps smaller than 3×3 work), then bilinear upsampling back to H×W; b_pool = GAP → 1×1
    conv-BN-PReLU → d, broadcast. Output = 1×1 conv-BN-PReLU of concat(b1, Σ_s b_s, b_pool), 3d → out.

    The pooling branch normalises 1×1 maps, so training needs batches of at least 2 images.
    """

    def __init__(self, in_channels: int, out_channels: int, *, scales: Sequence[int] = (2, 4, 6)) -> None:
        super().__init__()
        d = max(1, out_channels // 2)
        self.scales = tuple(int(s) for s in scales)
        self.stem = conv_bn_act(in_channels, out_channels, prelu, kernel_size=3)
        self.local = conv_bn_act(out_channels, d, prelu)
        self.strided = nn.ModuleList(
            nn.Sequential(
                conv_bn_act(out_channels, d, prelu, kernel_size=3, dilation=s),
                separable_conv(d, d, leaky, stride=s),
            )
            for s in self.scales
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_act(out_channels, d, prelu))
        self.fuse = conv_bn_act(3 * d, out_channels, prelu)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        size = x.shape[-2:]
        multi = None
        for branch in self.strided:
            b = F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            multi = b if multi is None else multi + b
        pooled = self.pool(x).expand(-1, -1, *size)
        return self.fuse(torch.cat([self.local(x), multi, pooled], dim=1))
