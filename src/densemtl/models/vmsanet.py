"""VMSANet: SegNet-MTAN with channel attention on every shared stage and variable multi-scale convs.

Ji, Sun, Meng, Pang and Tian, "Variable multi-scale attention fusion network and adaptive
correcting gradient optimization for multi-task learning", Pattern Recognition 162 (2025) 111423
(https://doi.org/10.1016/j.patcog.2025.111423); built to METHODS.md §1 on MTAN (Liu et al.,
CVPR 2019). Corrections over the authors' code (SyqxhSt/Net-Opt-MTL): the VMSM is actually on the
forward path, all its strided branches are fused, any number of tasks, classes from the dataset.

The shared SegNet (``segnet.SegNetTrunk``'s stages) gets a CACM after each of its encoder and
decoder stages. Each task t keeps an attended stream: at encoder level i a mask
m = att_t,i([g0_i, a_{i-1}]) multiplies the stage output g1_i, then the shared VMSM (MTAN's
``f_enc``) maps it to the next level's width and it is max-pooled; in the decoder it is upsampled,
passed through the shared ``f_dec`` (a 3×3 conv-BN-ReLU, or a VMSM with ``vmsm_in_decoder``), and
masked again (the mask reads the stage's unpooled input and the stream, as in MTAN). The last
attended map feeds the task's head (``layers.task_head``, MTAN's: 3×3 conv, 1×1 conv; correction
of issue 10: there used to be a ReLU between them, which neither MTAN nor the authors' code has).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.models import register
from densemtl.models._knobs import check_bool, check_positive_ints
from densemtl.models._vmsa_blocks import ChannelAttention, VariableMultiScale
from densemtl.models.base import MultiTaskModel
from densemtl.models.layers import attention_mask, conv_bn_relu, task_head, xavier_init
from densemtl.models.segnet import SegNetTrunk, check_input_size, segnet_filters


class VMSANet(MultiTaskModel):
    """SegNet-MTAN + CACM on the 2·D shared stages + VMSM as the shared conv between attention levels.

    Shared: the SegNet stages, the CACMs, the VMSMs and the decoder's shared convs. Task t's own:
    its encoder and decoder attention masks and its head. No single tensor feeds the heads (each
    task reads every level), so ``has_representation`` is False.
    """

    has_representation = False

    def __init__(
        self,
        task_channels: dict[str, int],
        filters: Sequence[int],
        *,
        scales: Sequence[int] = (2, 4, 6),
        vmsm_in_decoder: bool = False,
    ) -> None:
        super().__init__(task_channels)
        self.filters = tuple(filters)
        self.scales = tuple(scales)
        self.vmsm_in_decoder = vmsm_in_decoder
        depth = len(self.filters)
        dec_out = (self.filters[0], *self.filters[:-1])  # decoder stage i: filters[i] -> dec_out[i]
        enc_next = (*self.filters[1:], self.filters[-1])  # f_enc at level i: filters[i] -> enc_next[i]
        self.trunk = SegNetTrunk(self.filters)
        self.encoder_cacm = nn.ModuleList(ChannelAttention(c) for c in self.filters)
        self.decoder_cacm = nn.ModuleList(ChannelAttention(c) for c in dec_out)
        self.encoder_shared = nn.ModuleList(
            VariableMultiScale(self.filters[i], enc_next[i], scales=self.scales) for i in range(depth)
        )
        self.decoder_shared = nn.ModuleList(
            VariableMultiScale(self.filters[i], dec_out[i], scales=self.scales)
            if vmsm_in_decoder
            else conv_bn_relu(self.filters[i], dec_out[i])
            for i in range(depth)
        )
        self.encoder_masks = nn.ModuleDict(
            {
                t: nn.ModuleList(attention_mask(c if i == 0 else 2 * c, c) for i, c in enumerate(self.filters))
                for t in self.tasks
            }
        )
        # As in MTAN, a decoder mask reads the unpooled input of its stage and the task's upsampled stream.
        self.decoder_masks = nn.ModuleDict(
            {
                t: nn.ModuleList(attention_mask(c_in + c, c) for c_in, c in zip(self.filters, dec_out, strict=True))
                for t in self.tasks
            }
        )
        self.heads = nn.ModuleDict({t: task_head(self.filters[0], n) for t, n in self.task_channels.items()})
        xavier_init(self)  # MTAN's initialisation for every module, not just the trunk

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Task ``task``'s encoder and decoder attention masks and its head."""
        if task not in self.heads:
            return []
        return [
            *self.encoder_masks[task].parameters(),
            *self.decoder_masks[task].parameters(),
            *self.heads[task].parameters(),
        ]

    @staticmethod
    def _stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output of the stage's first conv, output of the whole stage)."""
        first = stage[0](x)
        rest = first
        for layer in list(stage)[1:]:
            rest = layer(rest)
        return first, rest

    def min_input_side(self) -> int:
        return self.trunk.min_input_side()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        check_input_size("vmsanet", x, len(self.filters))
        trunk = self.trunk
        att: dict[str, Tensor] = {}
        indices: list[Tensor] = []
        sizes: list[tuple[int, ...]] = []
        for i, stage in enumerate(trunk.encoder):
            g0, g1 = self._stage(stage, x)
            g1 = self.encoder_cacm[i](g1)
            for t in self.tasks:
                inp = g0 if i == 0 else torch.cat([g0, att[t]], dim=1)
                attended = self.encoder_masks[t][i](inp) * g1
                att[t] = F.max_pool2d(self.encoder_shared[i](attended), 2, 2)
            sizes.append(tuple(g1.shape))
            x, idx = trunk.pool(g1)
            indices.append(idx)
        for i in reversed(range(len(self.filters))):
            x = trunk.unpool(x, indices[i], output_size=sizes[i])
            g1 = self.decoder_cacm[i](trunk.decoder[i](x))
            for t in self.tasks:
                up = F.interpolate(att[t], size=x.shape[-2:], mode="bilinear", align_corners=False)
                up = self.decoder_shared[i](up)
                att[t] = self.decoder_masks[t][i](torch.cat([x, up], dim=1)) * g1
            x = g1
        return {t: self.heads[t](att[t]) for t in self.tasks}


@register("vmsanet", tiny={"width": 0.125, "depth_stages": 3, "scales": (2, 4)})
def vmsanet(
    task_channels: dict[str, int],
    scales: Sequence[int] = (2, 4, 6),
    width: float = 1.0,
    vmsm_in_decoder: bool = False,
    depth_stages: int = 5,
) -> MultiTaskModel:
    """VMSANet (Ji et al., Pattern Recognition 2025): SegNet-MTAN + CACM + VMSM, any number of tasks.

    Corrects the authors' code: the VMSM is used (theirs is built, never called), all strided
    branches are fused (theirs drops two), any number of tasks and classes (theirs: two, 14 classes).

    Args:
        task_channels: output channels per task, e.g. ``{"seg": 13, "depth": 1, "normal": 3}``.
        scales: strides (and dilations) of the VMSM's multi-scale branches; a list or tuple of
            positive integers. Pick them for the feature-map sizes: a stride larger than the map
            still works (it sees one pixel).
        width: multiplier on SegNet's filters 64-128-256-512-512 (each stage keeps at least 4
            channels; the CACM's reduced widths C/16, C/r at least 1).
        vmsm_in_decoder: also use the VMSM as the decoder's shared conv (MTAN's ``f_dec``).
        depth_stages: encoder (and decoder) stages, 3 to 5; inputs need sides >= ``2**depth_stages``.

    The VMSM's pooling branch holds batch norms over 1×1 maps: train with batches of >= 2 images.
    """
    return VMSANet(
        task_channels,
        segnet_filters(width, depth_stages, "vmsanet"),
        scales=check_positive_ints("vmsanet", "scales", scales),
        vmsm_in_decoder=check_bool("vmsanet", "vmsm_in_decoder", vmsm_in_decoder),
    )
