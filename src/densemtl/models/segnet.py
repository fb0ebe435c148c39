"""SegNet as used by MTAN: a shared encoder-decoder with small per-task heads.

The trunk follows the SegNet of Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019 (https://arxiv.org/abs/1803.10704), without the attention modules (their
"split" baseline): encoder stages of 3×3 conv-BN-ReLU layers with filters 64, 128, 256, 512, 512
(2, 2, 3, 3, 3 layers), each followed by 2×2 max-pooling that remembers its indices, and a
mirrored decoder that max-unpools with those indices. The decoder's last feature map (full
resolution, ``filters[0]`` channels) is the shared representation; each task reads it with a
3×3 conv, a ReLU and a 1×1 conv.

All outputs are raw: segmentation logits, unconstrained depth, unnormalised normals.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models import register
from densemtl.models.base import MultiTaskModel

BASE_FILTERS: tuple[int, ...] = (64, 128, 256, 512, 512)
MIN_CHANNELS = 4


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


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution (no bias: the batch norm has one), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def stage_layers(in_channels: int, out_channels: int, n_layers: int) -> nn.Sequential:
    """``n_layers`` conv-BN-ReLU layers, the first changing ``in_channels`` to ``out_channels``."""
    layers = [conv_bn_relu(in_channels, out_channels)]
    layers += [conv_bn_relu(out_channels, out_channels) for _ in range(n_layers - 1)]
    return nn.Sequential(*layers)


def task_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """MTAN's prediction head: 3×3 conv, ReLU, 1×1 conv to the task's channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class SegNetTrunk(nn.Module):
    """The shared encoder-decoder: image (B,3,H,W) -> features (B,filters[0],H,W).

    Any ``H, W >= 2**len(filters)`` work: unpooling restores each stage's exact size, odd or not.
    """

    def __init__(self, filters: tuple[int, ...], in_channels: int = 3) -> None:
        super().__init__()
        self.filters = tuple(filters)
        # Stages 0 and 1 have two conv layers, deeper stages three, as in SegNet / MTAN.
        n_layers = [2 if i < 2 else 3 for i in range(len(filters))]
        enc_in = (in_channels, *filters[:-1])
        self.encoder = nn.ModuleList(
            stage_layers(c_in, c_out, n) for c_in, c_out, n in zip(enc_in, filters, n_layers, strict=True)
        )
        # Decoder stage i mirrors encoder stage i: filters[i] -> filters[i-1] (-> filters[0] at 0).
        dec_out = (filters[0], *filters[:-1])
        self.decoder = nn.ModuleList(
            stage_layers(c_in, c_out, n) for c_in, c_out, n in zip(filters, dec_out, n_layers, strict=True)
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MTAN's initialisation: Xavier-normal convolutions, unit-scale batch norms."""
        xavier_init(self)

    @property
    def out_channels(self) -> int:
        return self.filters[0]

    def forward(self, x: Tensor) -> Tensor:
        min_side = 2 ** len(self.filters)
        if min(x.shape[-2:]) < min_side:
            raise ValueError(
                f"segnet with {len(self.filters)} stages needs inputs of at least "
                f"{min_side}×{min_side}, got {tuple(x.shape[-2:])}; use fewer depth_stages"
            )
        indices: list[Tensor] = []
        sizes: list[tuple[int, ...]] = []
        for stage in self.encoder:
            x = stage(x)
            sizes.append(tuple(x.shape))
            x, idx = self.pool(x)
            indices.append(idx)
        for i in reversed(range(len(self.decoder))):
            x = self.unpool(x, indices[i], output_size=sizes[i])
            x = self.decoder[i](x)
        return x


class SegNetMTL(MultiTaskModel):
    """Hard-shared SegNet trunk with one MTAN-style head per task."""

    def __init__(self, task_channels: dict[str, int], filters: tuple[int, ...]) -> None:
        super().__init__(task_channels)
        self.trunk = SegNetTrunk(filters)
        c = self.trunk.out_channels
        self.heads = nn.ModuleDict({t: task_head(c, n) for t, n in self.task_channels.items()})
        for head in self.heads.values():
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)

    def encode(self, x: Tensor) -> Tensor:
        """The decoder's last feature map, at the input's resolution."""
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        out = {}
        for t in self.tasks:
            y = self.heads[t](rep)
            if tuple(y.shape[-2:]) != tuple(size):
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out[t] = y
        return out


def segnet_filters(width: float, depth_stages: int) -> tuple[int, ...]:
    """Channel counts of the stages: SegNet's, scaled by ``width``, at least ``MIN_CHANNELS``."""
    if not isinstance(width, (int, float)) or isinstance(width, bool) or width <= 0:
        raise ConfigError(f"segnet knob 'width' must be a positive number, got {width!r}")
    if depth_stages not in (3, 4, 5) or isinstance(depth_stages, bool):
        raise ConfigError(f"segnet knob 'depth_stages' must be 3, 4 or 5, got {depth_stages!r}")
    return tuple(max(MIN_CHANNELS, round(f * width)) for f in BASE_FILTERS[:depth_stages])


@register("segnet")
def segnet(task_channels: dict[str, int], width: float = 1.0, depth_stages: int = 5) -> MultiTaskModel:
    """MTAN's SegNet (split, no attention) with per-task heads.

    Args:
        task_channels: output channels per task, e.g. ``{"seg": 13, "depth": 1, "normal": 3}``.
        width: multiplier on the filters 64-128-256-512-512 (0.125 for CPU demos); each stage
            keeps at least 4 channels.
        depth_stages: number of encoder (and decoder) stages, 3 to 5; inputs need sides of at
            least ``2**depth_stages`` pixels.
    """
    return SegNetMTL(task_channels, segnet_filters(width, depth_stages))
