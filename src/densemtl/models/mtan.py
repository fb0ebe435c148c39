"""MTAN: a shared network with a soft-attention network per task.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019
(https://arxiv.org/abs/1803.10704). One shared network is a global feature pool; each task has
an attention module at every level that reads the shared features there and the task's own
attended features from the level before, and outputs a per-channel, per-pixel mask in (0, 1):

    a_j = sigmoid(BN(1×1 conv(ReLU(BN(1×1 conv([u_j, f_{j-1}(â_{j-1})]))))))
    â_j = a_j ⊙ p_j

where ``u_j`` is the shared feature after the first layer of block ``j``, ``p_j`` the block's
output, and ``f`` a 3×3 conv-BN-ReLU that maps the attended features to the next level's
channels, followed by 2×2 max-pooling in the encoder or bilinear upsampling in the decoder. As
in the authors' code, ``f`` is shared by the tasks (it is applied to each task's attended
features in turn) and the masks ``g, h`` are task-specific. Each task's head reads its last
attended features.

Two shared networks:
- ``segnet``: the SegNet of ``densemtl.models.segnet`` (attention at every encoder and decoder
  stage, MTAN heads: 3×3 conv, 1×1 conv; correction of issue 10: no ReLU between them);
- ``resnet18/34/50``: the dilated ResNet of ``densemtl.models.hps`` with attention over its 4
  stages, as in the authors' ``MTANDeepLabv3`` (``u_j`` = the stage without its last block,
  ``p_j`` = the whole stage), with bottleneck-width masks (C/4 hidden channels) and ``f``
  mapping to C_{j+1}/4 channels to keep it light, and per-task heads that are the tail of the
  hps head without the ASPP: 3×3 conv-BN-ReLU of ``head_channels``, 1×1 conv;
- ``timm:<name>``: the 4 deepest feature levels of a timm model (``models.timm_backbone``),
  dilated to ``output_stride`` where timm can. timm gives no "stage without its last block",
  so here the mask reads the level's output itself: ``a_j = mask([p_j, f_{j-1}(â_{j-1})])``,
  ``â_j = a_j ⊙ p_j``; masks, ``f`` and heads are as on the ResNets.

The masks read intermediate shared features, so there is no single shared representation:
``has_representation = False`` and gradient methods use the ``parameters`` mode.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models import register
from densemtl.models._knobs import check_positive_int
from densemtl.models.backbones import (
    BACKBONES,
    build_resnet,
    check_backbone,
    check_output_stride,
    register_imagenet_stats,
    stage_width,
)
from densemtl.models.base import MultiTaskModel
from densemtl.models.layers import attention_mask, conv_bn_relu, light_head, task_head, upsample, xavier_init
from densemtl.models.segnet import SegNetTrunk, check_input_size, segnet_filters
from densemtl.models.timm_backbone import TimmFeatures, check_backbone_args, is_timm_backbone

MTAN_BACKBONES = ("segnet", *BACKBONES)


def resize_to(x: Tensor, ref: Tensor, mode: str) -> Tensor:
    """``x`` at ``ref``'s spatial size: max-pooled (``"pool"``) or bilinearly resized (``"up"``)."""
    size = tuple(ref.shape[-2:])
    if mode == "pool" and tuple(x.shape[-2:]) != size:
        return F.adaptive_max_pool2d(x, size)
    return upsample(x, size)


def check_backbone_knobs(
    arch: str,
    backbone: str,
    width: float,
    depth_stages: int,
    head_channels: int,
    output_stride: int,
    pretrained: bool,
) -> None:
    """Check the knobs of a model on ``"segnet"`` or a dilated ResNet (mtan, crossstitch).

    The SegNet knobs (``width``, ``depth_stages``) must keep their defaults on a ResNet and the
    ResNet knobs (``head_channels``, ``output_stride``, ``pretrained``) on SegNet.
    """
    if backbone == "segnet":
        for knob, value, default in (
            ("head_channels", head_channels, 256),
            ("output_stride", output_stride, 8),
            ("pretrained", pretrained, False),
        ):
            if value != default:
                raise ConfigError(f"{arch} knob {knob!r} applies to the ResNet backbones, not segnet")
        return
    for knob, value, default in (("width", width, 1.0), ("depth_stages", depth_stages, 5)):
        if value != default:
            raise ConfigError(f"{arch} knob {knob!r} applies to backbone='segnet', not {backbone!r}")
    check_positive_int(arch, "head_channels", head_channels)
    check_output_stride(arch, output_stride)


class MTANBase(MultiTaskModel):
    """What both MTAN variants share: per-task ``attention`` and ``heads``, no representation."""

    has_representation = False
    attention: nn.ModuleDict
    heads: nn.ModuleDict

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Task ``task``'s attention masks and head."""
        if task not in self.heads:
            return []
        return [*self.attention[task].parameters(), *self.heads[task].parameters()]

    def predict(self, feats: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
        """Each task's head on its attended features, at ``size``."""
        return {t: upsample(self.heads[t](feats[t]), size) for t in self.tasks}


class SegNetMTAN(MTANBase):
    """MTAN on SegNet: attention at each of the ``2 × stages`` encoder and decoder stages."""

    def __init__(self, task_channels: dict[str, int], filters: tuple[int, ...]) -> None:
        super().__init__(task_channels)
        self.trunk = SegNetTrunk(filters)
        n = len(filters)
        dec_out = (filters[0], *filters[:-1])
        # Encoder level j: mask from [u_j, previous] (u_j alone at level 0); f_j: filters[j] -> next.
        enc_in = [filters[0]] + [2 * filters[j] for j in range(1, n)]
        enc_next = [*filters[1:], filters[-1]]
        # Decoder stage i (run from n-1 down to 0): f maps the incoming attended features
        # (filters[i] channels) to dec_out[i] after upsampling; the mask reads [u_i, that].
        self.encoder_blocks = nn.ModuleList(conv_bn_relu(filters[j], enc_next[j]) for j in range(n))
        self.decoder_blocks = nn.ModuleList(conv_bn_relu(filters[i], dec_out[i]) for i in range(n))
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleDict(
                    {
                        "encoder": nn.ModuleList(attention_mask(enc_in[j], filters[j]) for j in range(n)),
                        "decoder": nn.ModuleList(attention_mask(2 * dec_out[i], dec_out[i]) for i in range(n)),
                    }
                )
                for t in self.tasks
            }
        )
        c = filters[0]
        self.heads = nn.ModuleDict({t: task_head(c, k) for t, k in self.task_channels.items()})
        for part in (self.encoder_blocks, self.decoder_blocks, self.attention, self.heads):
            xavier_init(part)

    def min_input_side(self) -> int:
        return self.trunk.min_input_side()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        trunk = self.trunk
        check_input_size("mtan (segnet)", x, len(trunk.filters))
        att: dict[str, Tensor | None] = dict.fromkeys(self.tasks)
        indices: list[Tensor] = []
        sizes: list[tuple[int, ...]] = []
        h = x
        for j, stage in enumerate(trunk.encoder):
            u = stage[0](h)
            p = stage[1:](u)
            for t in self.tasks:
                prev = att[t]
                inp = u if prev is None else torch.cat([u, resize_to(prev, u, "pool")], dim=1)
                a = self.attention[t]["encoder"][j](inp) * p
                att[t] = F.max_pool2d(self.encoder_blocks[j](a), 2)
            sizes.append(tuple(p.shape))
            h, idx = trunk.pool(p)
            indices.append(idx)
        for i in reversed(range(len(trunk.decoder))):
            h = trunk.unpool(h, indices[i], output_size=sizes[i])
            stage = trunk.decoder[i]
            u = stage[0](h)
            h = p = stage[1:](u)
            for t in self.tasks:
                prev = self.decoder_blocks[i](resize_to(att[t], u, "up"))  # type: ignore[arg-type]
                att[t] = self.attention[t]["decoder"][i](torch.cat([u, prev], dim=1)) * p
        return self.predict(att, (x.shape[-2], x.shape[-1]))  # type: ignore[arg-type]


def attention_levels(
    tasks: tuple[str, ...], ch: list[int] | tuple[int, ...], head_channels: int, task_channels: dict[str, int]
) -> tuple[nn.ModuleList, nn.ModuleDict, nn.ModuleDict]:
    """MTAN's pieces over 4 levels of widths ``ch``: the shared ``f_j`` (level j's attended
    features -> max(1, C_{j+1}/4) channels), each task's masks (C_j/4 hidden channels, input
    C_j plus f's output from the level before) and each task's head on the last level."""
    q = [max(1, c // 4) for c in ch]
    blocks = nn.ModuleList(conv_bn_relu(ch[j], q[j + 1]) for j in range(3))
    mask_in = [ch[0]] + [ch[j] + q[j] for j in range(1, 4)]
    attention = nn.ModuleDict(
        {t: nn.ModuleList(attention_mask(mask_in[j], ch[j], hidden=q[j]) for j in range(4)) for t in tasks}
    )
    heads = nn.ModuleDict({t: light_head(ch[3], k, head_channels) for t, k in task_channels.items()})
    for part in (blocks, attention, heads):
        xavier_init(part)
    return blocks, attention, heads


class ResNetMTAN(MTANBase):
    """MTAN on the dilated ResNet: attention over the last block of each of the 4 stages."""

    def __init__(
        self,
        task_channels: dict[str, int],
        backbone: str,
        output_stride: int,
        head_channels: int,
        pretrained: bool,
    ) -> None:
        super().__init__(task_channels)
        self.backbone_name = backbone
        net = build_resnet(backbone, output_stride, pretrained, "mtan")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        ch = [stage_width(s) for s in self.stages]
        # f_j: stage j's attended features -> C_{j+1}/4 channels (none after the last stage).
        self.blocks, self.attention, self.heads = attention_levels(self.tasks, ch, head_channels, self.task_channels)
        register_imagenet_stats(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.stem((x - self.mean) / self.std)
        att: dict[str, Tensor | None] = dict.fromkeys(self.tasks)
        for j, stage in enumerate(self.stages):
            u = stage[:-1](h)
            h = stage[-1](u)
            for t in self.tasks:
                prev = att[t]
                inp = u if prev is None else torch.cat([u, resize_to(prev, u, "pool")], dim=1)
                a = self.attention[t][j](inp) * h
                att[t] = self.blocks[j](a) if j < 3 else a
        return self.predict(att, (x.shape[-2], x.shape[-1]))  # type: ignore[arg-type]


class TimmMTAN(MTANBase):
    """MTAN on a timm backbone: attention over its 4 deepest feature levels."""

    def __init__(
        self,
        task_channels: dict[str, int],
        backbone: str,
        output_stride: int,
        head_channels: int,
        pretrained: bool,
        backbone_args: dict[str, Any],
    ) -> None:
        super().__init__(task_channels)
        self.backbone_name = backbone
        self.backbone = TimmFeatures(
            backbone, "mtan", levels=4, output_stride=output_stride, pretrained=pretrained, extra=backbone_args
        )
        self.output_stride = self.backbone.reductions[-1]
        self.blocks, self.attention, self.heads = attention_levels(
            self.tasks, self.backbone.channels, head_channels, self.task_channels
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        att: dict[str, Tensor | None] = dict.fromkeys(self.tasks)
        for j, p in enumerate(self.backbone(x)):
            for t in self.tasks:
                prev = att[t]
                inp = p if prev is None else torch.cat([p, resize_to(prev, p, "pool")], dim=1)
                a = self.attention[t][j](inp) * p
                att[t] = self.blocks[j](a) if j < 3 else a
        return self.predict(att, (x.shape[-2], x.shape[-1]))  # type: ignore[arg-type]


@register("mtan", tiny={"width": 0.125, "depth_stages": 3})
def mtan(
    task_channels: dict[str, int],
    backbone: str = "segnet",
    width: float = 1.0,
    depth_stages: int = 5,
    head_channels: int = 256,
    output_stride: int = 8,
    pretrained: bool = False,
    backbone_args: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """Multi-Task Attention Network (Liu et al., CVPR 2019, https://arxiv.org/abs/1803.10704).

    Args:
        task_channels: output channels per task, e.g. ``{"seg": 13, "depth": 1, "normal": 3}``.
        backbone: ``"segnet"`` (the paper's) or a dilated ``"resnet18"``, ``"resnet34"``,
            ``"resnet50"`` (the authors' MTAN-DeepLabv3), or ``"timm:<name>"`` (a timm model's
            4 deepest feature levels; ``pip install densemtl[timm]``).
        width: segnet only: multiplier on the filters 64-128-256-512-512 (0.125 for CPU demos).
        depth_stages: segnet only: encoder (and decoder) stages, 3 to 5; inputs need sides of
            at least ``2**depth_stages`` pixels.
        head_channels: ResNet only: width of each task's 3×3 head layer.
        output_stride: ResNet and timm only: 8 or 16, as in hps.
        pretrained: ResNet and timm only: ImageNet weights for the shared backbone, as in hps.
        backbone_args: timm only: extra ``timm.create_model`` keywords, as in hps.
    """
    check_backbone("mtan", backbone, MTAN_BACKBONES)
    check_backbone_knobs("mtan", backbone, width, depth_stages, head_channels, output_stride, pretrained)
    extra = check_backbone_args("mtan", backbone, backbone_args)
    if backbone == "segnet":
        return SegNetMTAN(task_channels, segnet_filters(width, depth_stages, "mtan"))
    if is_timm_backbone(backbone):
        return TimmMTAN(task_channels, backbone, output_stride, head_channels, bool(pretrained), extra)
    return ResNetMTAN(task_channels, backbone, output_stride, head_channels, bool(pretrained))
