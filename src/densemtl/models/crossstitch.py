"""Cross-stitch networks: one network per task, mixed linearly between stages.

Misra, Shrivastava, Gupta and Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016
(https://arxiv.org/abs/1604.03539). Each task has its own copy of the network (a "column");
between consecutive stages a cross-stitch unit replaces every column's activation by a learned
linear combination of all columns' activations at that point,

    x̃_i = Σ_j α_ij x_j,

with one α per pair of tasks in the paper and, generalised here, per channel as well
(α has shape T × T × C). The paper initialises α_ii = p_same and α_ij = 1 − p_same for two tasks
and finds (0.9, 0.1) works well; for T tasks we keep the rows summing to one,
α_ij = (1 − p_same) / (T − 1), so that the units start as a mild mixing that preserves scale.

Columns:
- ``segnet``: the SegNet encoder-decoder of ``densemtl.models.segnet``, a unit after every
  stage but the last decoder stage (2·stages − 1 units; the encoder's after max-pooling, as
  after Misra's pool layers and in the MTAN authors' SegNet baseline), MTAN heads (3×3 conv,
  1×1 conv; correction of issue 10: no ReLU between them);
- ``resnet18/34/50``: the dilated ResNet of ``densemtl.models.hps`` (stem + layer1, layer2,
  layer3, layer4), units after the first three stages, and the light head of ``mtan``.

Which parameters are shared. A column's stages before the last unit feed every task's output
through the units, so by the contract of ``MultiTaskModel`` (task parameters are those only that
task uses) they are shared, together with the units; the last stage of task ``t``'s column and
its head reach only task ``t`` and are ``task_parameters(t)``. This is LibMTL's division too,
and it is what makes a gradient method see the whole conflict: were whole columns declared
task-specific, the engine would give column ``t`` only ∇L_t and drop the ∇L_j that reach it
through the units. ``column_parameters(t)`` lists a whole column. ``has_representation = False``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densemtl.models import register
from densemtl.models._knobs import check_unit_interval
from densemtl.models.backbones import BACKBONES, build_resnet, check_backbone, register_imagenet_stats, stage_width
from densemtl.models.base import MultiTaskModel
from densemtl.models.layers import light_head, task_head, upsample, xavier_init
from densemtl.models.mtan import check_backbone_knobs
from densemtl.models.segnet import SegNetTrunk, check_input_size, segnet_filters

CROSS_BACKBONES = ("segnet", *BACKBONES)


def cross_stitch_init(n_tasks: int, channels: int, alpha_same: float) -> Tensor:
    """α of shape (T, T, C): ``alpha_same`` on the diagonal, the rest of each row spread evenly."""
    if n_tasks == 1:
        return torch.ones(1, 1, channels)
    other = (1.0 - alpha_same) / (n_tasks - 1)
    alpha = torch.full((n_tasks, n_tasks), other)
    alpha.fill_diagonal_(alpha_same)
    return alpha.unsqueeze(-1).repeat(1, 1, channels)


class CrossStitchUnit(nn.Module):
    """x̃_i[:, c] = Σ_j α_ij[c] x_j[:, c] for the T columns' activations x_j (B, C, H, W)."""

    def __init__(self, n_tasks: int, channels: int, alpha_same: float = 0.9) -> None:
        super().__init__()
        self.alpha = nn.Parameter(cross_stitch_init(n_tasks, channels, alpha_same))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        mixed = torch.einsum("ijc,jbchw->ibchw", self.alpha, torch.stack(xs))
        return list(mixed.unbind(0))


class CrossStitchBase(MultiTaskModel):
    """Columns in ``self.columns[task]`` whose last stage is ``self.columns[task].top``."""

    has_representation = False
    columns: nn.ModuleDict
    heads: nn.ModuleDict

    def _last_stage(self, task: str) -> nn.Module:
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The last stage of ``task``'s column (after the last unit) and its head."""
        if task not in self.heads:
            return []
        return [*self._last_stage(task).parameters(), *self.heads[task].parameters()]

    def column_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s whole column and head (most of it shared through the units; see the module doc)."""
        return [*self.columns[task].parameters(), *self.heads[task].parameters()]

    def predict(self, feats: list[Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
        """Each task's head on its column's output, at ``size``."""
        return {t: upsample(self.heads[t](f), size) for t, f in zip(self.tasks, feats, strict=True)}


class SegNetCrossStitch(CrossStitchBase):
    """One SegNet per task with cross-stitch units between all its stages."""

    def __init__(self, task_channels: dict[str, int], filters: tuple[int, ...], alpha_same: float) -> None:
        super().__init__(task_channels)
        T, n = len(self.tasks), len(filters)
        self.columns = nn.ModuleDict({t: SegNetTrunk(filters) for t in self.tasks})
        dec_out = (filters[0], *filters[:-1])
        self.encoder_units = nn.ModuleList(CrossStitchUnit(T, c, alpha_same) for c in filters)
        # Decoder stage i runs from n-1 down to 0; a unit follows each but stage 0.
        self.decoder_units = nn.ModuleList(CrossStitchUnit(T, dec_out[i], alpha_same) for i in range(1, n))
        self.heads = nn.ModuleDict({t: task_head(filters[0], k) for t, k in self.task_channels.items()})
        xavier_init(self.heads)

    def _last_stage(self, task: str) -> nn.Module:
        return self.columns[task].decoder[0]

    def min_input_side(self) -> int:
        return max(column.min_input_side() for column in self.columns.values())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        cols = [self.columns[t] for t in self.tasks]
        n = len(cols[0].filters)
        check_input_size("crossstitch (segnet)", x, n)
        hs = [x] * len(cols)
        indices: list[list[Tensor]] = [[] for _ in cols]
        sizes: list[tuple[int, ...]] = []
        for i in range(n):
            pooled = []
            for k, col in enumerate(cols):
                h = col.encoder[i](hs[k])
                if k == 0:
                    sizes.append(tuple(h.shape))
                h, idx = col.pool(h)
                indices[k].append(idx)
                pooled.append(h)
            hs = self.encoder_units[i](pooled)
        for i in reversed(range(n)):
            hs = [col.decoder[i](col.unpool(hs[k], indices[k][i], output_size=sizes[i])) for k, col in enumerate(cols)]
            if i > 0:
                hs = self.decoder_units[i - 1](hs)
        return self.predict(hs, (x.shape[-2], x.shape[-1]))


class ResNetCrossStitch(CrossStitchBase):
    """One dilated ResNet per task with cross-stitch units after layer1, layer2 and layer3."""

    def __init__(
        self,
        task_channels: dict[str, int],
        backbone: str,
        output_stride: int,
        head_channels: int,
        pretrained: bool,
        alpha_same: float,
    ) -> None:
        super().__init__(task_channels)
        self.backbone_name = backbone
        self.columns = nn.ModuleDict(
            {t: build_resnet(backbone, output_stride, pretrained, "crossstitch") for t in self.tasks}
        )
        first = self.columns[self.tasks[0]]
        ch = [stage_width(stage) for stage in (first.layer1, first.layer2, first.layer3, first.layer4)]
        T = len(self.tasks)
        self.units = nn.ModuleList(CrossStitchUnit(T, c, alpha_same) for c in ch[:3])
        self.heads = nn.ModuleDict({t: light_head(ch[3], k, head_channels) for t, k in self.task_channels.items()})
        xavier_init(self.heads)
        register_imagenet_stats(self)

    def _last_stage(self, task: str) -> nn.Module:
        return self.columns[task].layer4

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        cols = [self.columns[t] for t in self.tasks]
        z = (x - self.mean) / self.std
        hs = [col.layer1(col.maxpool(col.relu(col.bn1(col.conv1(z))))) for col in cols]
        hs = self.units[0](hs)
        for j, name in enumerate(("layer2", "layer3"), start=1):
            hs = self.units[j]([getattr(col, name)(h) for col, h in zip(cols, hs, strict=True)])
        hs = [col.layer4(h) for col, h in zip(cols, hs, strict=True)]
        return self.predict(hs, (x.shape[-2], x.shape[-1]))


@register("crossstitch", tiny={"width": 0.125, "depth_stages": 3})
def crossstitch(
    task_channels: dict[str, int],
    backbone: str = "segnet",
    width: float = 1.0,
    depth_stages: int = 5,
    alpha_same: float = 0.9,
    head_channels: int = 256,
    output_stride: int = 8,
    pretrained: bool = False,
) -> MultiTaskModel:
    """Cross-stitch networks (Misra et al., CVPR 2016, https://arxiv.org/abs/1604.03539).

    Args:
        task_channels: output channels per task.
        backbone: each column's network: ``"segnet"`` or a dilated ``"resnet18"``,
            ``"resnet34"``, ``"resnet50"``.
        width: segnet only: multiplier on the filters 64-128-256-512-512.
        depth_stages: segnet only: encoder (and decoder) stages, 3 to 5.
        alpha_same: initial α_ii in [0, 1] (the paper's 0.9); α_ij = (1 − alpha_same)/(T − 1).
        head_channels: ResNet only: width of each task's 3×3 head layer.
        output_stride: ResNet only: 8 or 16, as in hps.
        pretrained: ResNet only: ImageNet weights in every column (the paper starts all columns
            from the same pretrained network).
    """
    check_backbone("crossstitch", backbone, CROSS_BACKBONES)
    alpha = check_unit_interval("crossstitch", "alpha_same", alpha_same)
    check_backbone_knobs("crossstitch", backbone, width, depth_stages, head_channels, output_stride, pretrained)
    if backbone == "segnet":
        return SegNetCrossStitch(task_channels, segnet_filters(width, depth_stages, "crossstitch"), alpha)
    return ResNetCrossStitch(task_channels, backbone, output_stride, head_channels, bool(pretrained), alpha)
