"""SegNet as used by MTAN: a shared encoder-decoder with small per-task heads.

The trunk follows the SegNet of Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019 (https://arxiv.org/abs/1803.10704), without the attention modules (their
"split" baseline): encoder stages of 3×3 conv-BN-ReLU layers with filters 64, 128, 256, 512, 512
(2, 2, 3, 3, 3 layers), each followed by 2×2 max-pooling that remembers its indices, and a
mirrored decoder that max-unpools with those indices. The decoder's last feature map (full
resolution, ``filters[0]`` channels) is the shared representation; each task reads it with
MTAN's head, a 3×3 conv followed by a 1×1 conv (``layers.task_head``; correction of issue 10:
there used to be a ReLU between them, which MTAN does not have).

All outputs are raw: segmentation logits, unconstrained depth, unnormalised normals.
"""

from __future__ import annotations

from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models import register
from densemtl.models._knobs import check_choice, check_positive_number
from densemtl.models.base import MultiTaskModel
from densemtl.models.layers import conv_bn_relu, task_head, upsample, xavier_init

BASE_FILTERS: tuple[int, ...] = (64, 128, 256, 512, 512)
MIN_CHANNELS = 4
DEPTH_STAGES = (3, 4, 5)


def stage_layers(in_channels: int, out_channels: int, n_layers: int) -> nn.Sequential:
    """``n_layers`` conv-BN-ReLU layers, the first changing ``in_channels`` to ``out_channels``."""
    layers = [conv_bn_relu(in_channels, out_channels)]
    layers += [conv_bn_relu(out_channels, out_channels) for _ in range(n_layers - 1)]
    return nn.Sequential(*layers)


class InputSizeError(ConfigError, ValueError):
    """An input smaller than the architecture takes: a ValueError to library callers, a one-line
    user error (exit 2) to the CLI, should a size get past the checks made before a run."""


def check_input_size(arch: str, x: Tensor, n_stages: int) -> None:
    """An :class:`InputSizeError` unless both sides of ``x`` survive ``n_stages`` 2×2 poolings."""
    min_side = 2**n_stages
    if min(x.shape[-2:]) < min_side:
        raise InputSizeError(
            f"{arch} with {n_stages} stages needs inputs of at least {min_side}×{min_side}, "
            f"got {tuple(x.shape[-2:])}; use fewer depth_stages"
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

    def min_input_side(self) -> int:
        """Both sides must survive one 2×2 pooling per stage."""
        return 2 ** len(self.filters)

    def forward(self, x: Tensor) -> Tensor:
        check_input_size("segnet", x, len(self.filters))
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
        xavier_init(self.heads)

    def encode(self, x: Tensor) -> Tensor:
        """The decoder's last feature map, at the input's resolution."""
        return self.trunk(x)

    def min_input_side(self) -> int:
        return self.trunk.min_input_side()

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: upsample(self.heads[t](rep), size) for t in self.tasks}


def segnet_filters(width: float, depth_stages: int, arch: str = "segnet") -> tuple[int, ...]:
    """Channel counts of the stages: SegNet's, scaled by ``width``, at least ``MIN_CHANNELS``.

    Checks ``arch``'s knobs ``width`` (a positive number) and ``depth_stages`` (3, 4 or 5).
    """
    check_positive_number(arch, "width", width)
    check_choice(arch, "depth_stages", depth_stages, DEPTH_STAGES)
    return tuple(max(MIN_CHANNELS, round(f * width)) for f in BASE_FILTERS[:depth_stages])


@register("segnet", tiny={"width": 0.125, "depth_stages": 3})
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
