"""MTI-Net: multi-scale task interaction networks, at reduced scale.

Vandenhende, Georgoulis and Van Gool, "MTI-Net: Multi-Scale Task Interaction Networks for
Multi-Task Learning", ECCV 2020 (https://arxiv.org/abs/2001.06902).

On the four stages of a plain ResNet (scales 1/4, 1/8, 1/16, 1/32; the paper uses HRNet), or
the 4 deepest feature levels of a timm model (``backbone="timm:<name>"``, undilated: 1/4 to 1/32
for CNNs and Swin, 1/16 at every level for ViTs), from the coarsest scale to the finest:

1. Initial task predictions: per scale s and task t, features ``F_{t,s}`` (two residual blocks of
   width ``channels``) from the backbone features at s, concatenated for s < 1/32 with the
   features that the FPM propagated from the coarser scale; a 1×1 auxiliary prediction from
   ``F_{t,s}`` is deep-supervised.
2. Feature propagation module (FPM), between consecutive scales: the task features of the
   coarser scale are mixed across tasks (a shared bottleneck gives per-channel attention logits,
   a softmax over tasks weights each task's features, the weighted sum is refined by a 3×3
   conv-BN-ReLU), then every task takes that mixture through its own squeeze-and-excitation gate
   and adds it to its own features; the result is upsampled into the next finer scale.
3. Multi-scale multi-modal distillation: per scale and target task t,
   ``F_{t,s} + Σ_{u≠t} σ(W_{u,t,s} F_{u,s}) ⊙ (W'_{u,t,s} F_{u,s})``.
4. Feature aggregation: per task, the distilled features of the four scales upsampled to 1/4,
   concatenated and decoded by a 3×3 conv-BN-ReLU and a 1×1 conv; upsampled to the input size.

Which parameters are whose: every ``F_{u,s}`` feeds the distillation of all targets at s and,
through the FPM, every task at the finer scales, so the initial-prediction blocks and the FPMs
are *shared* with the backbone. Each task owns (``heads[t]``) its four auxiliary 1×1 predictions,
its four distillation units and its aggregation head. Several shared tensors (four scales ×
T tasks) feed the task-owned part, so there is no single shared representation
(``has_representation = False``): gradient methods use the parameters mode.

Deep supervision: the forward returns ``Predictions`` whose ``aux`` holds the 4 auxiliary
predictions per task, and ``extra_losses(preds, batch)`` returns ``aux_weight`` × the sum of
their losses per task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from densemtl.models import register
from densemtl.models._multiscale import DeepSupervision, Distillation, TaskFeatures, check_common_knobs
from densemtl.models.backbones import register_imagenet_stats, resnet_stages
from densemtl.models.base import MultiTaskModel, Predictions
from densemtl.models.layers import conv_bn_relu, prediction_head, upsample
from densemtl.models.timm_backbone import TimmFeatures, check_backbone_args, is_timm_backbone

N_SCALES = 4


class SqueezeExcitation(nn.Module):
    """Channel gate of Hu et al. (CVPR 2018): global pooling, bottleneck MLP, sigmoid.

    The bottleneck keeps at least ``min_hidden`` units: with one or two, all of them are easily
    dead (ReLU) at initialisation in narrow CPU-sized models, and the gate then never learns.
    """

    def __init__(self, channels: int, reduction: int = 4, min_hidden: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class FeaturePropagation(nn.Module):
    """MTI-Net's FPM at one scale: cross-task attention mixture, per-task SE, residual per task."""

    def __init__(self, tasks: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.tasks = tasks
        n = len(tasks)
        self.logits = nn.Sequential(
            conv_bn_relu(n * channels, channels, kernel_size=1),
            conv_bn_relu(channels, channels),
            nn.Conv2d(channels, n * channels, 1),
        )
        self.refine = conv_bn_relu(channels, channels)
        self.select = nn.ModuleDict({t: SqueezeExcitation(channels) for t in tasks})

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        stacked = torch.stack([features[t] for t in self.tasks], dim=1)  # (B, T, C, H, W)
        b, n, c, h, w = stacked.shape
        weights = self.logits(stacked.reshape(b, n * c, h, w)).reshape(b, n, c, h, w).softmax(dim=1)
        mixed = self.refine((weights * stacked).sum(dim=1))
        return {t: features[t] + self.select[t](mixed) for t in self.tasks}


class MtiNetHead(nn.Module):
    """Everything task ``t`` owns: per-scale auxiliary predictions and distillation, aggregation head."""

    def __init__(self, task: str, tasks: tuple[str, ...], channels: int, out_channels: int) -> None:
        super().__init__()
        self.aux = nn.ModuleList([nn.Conv2d(channels, out_channels, 1) for _ in range(N_SCALES)])
        self.distill = nn.ModuleList([Distillation(task, tasks, channels, gate="source") for _ in range(N_SCALES)])
        self.final = prediction_head(N_SCALES * channels, channels, out_channels)


class MtiNet(DeepSupervision, MultiTaskModel):
    """MTI-Net on ResNet stages 1-4; see the module docstring."""

    has_representation = False

    def __init__(
        self,
        task_channels: dict[str, int],
        *,
        backbone: str = "resnet50",
        channels: int = 64,
        aux_weight: float = 1.0,
        pretrained: bool = False,
        backbone_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task_channels)
        self.channels = channels
        self.aux_weight = float(aux_weight)
        widths: list[int] | tuple[int, ...]
        if is_timm_backbone(backbone):
            self.backbone = TimmFeatures(
                backbone, "mtinet", levels=N_SCALES, pretrained=pretrained, extra=backbone_args
            )
            widths = self.backbone.channels
        else:
            self.stem, self.stages, widths = resnet_stages(backbone, pretrained, "mtinet")
        # Scale 3 (1/32) sees only the backbone; finer scales also get the propagated features.
        self.initial = nn.ModuleList(
            [
                nn.ModuleDict(
                    {t: TaskFeatures(widths[s] + (channels if s < N_SCALES - 1 else 0), channels) for t in self.tasks}
                )
                for s in range(N_SCALES)
            ]
        )
        # FPM s carries scale s to scale s - 1, so scales 1..3 have one (index 0 is unused).
        self.propagation = nn.ModuleList(
            [nn.Identity()] + [FeaturePropagation(self.tasks, channels) for _ in range(1, N_SCALES)]
        )
        self.heads = nn.ModuleDict({t: MtiNetHead(t, self.tasks, channels, n) for t, n in self.task_channels.items()})
        if not is_timm_backbone(backbone):
            register_imagenet_stats(self)

    def backbone_features(self, x: Tensor) -> list[Tensor]:
        """ResNet features at 1/4, 1/8, 1/16 and 1/32 of the input size (a timm backbone's 4 levels)."""
        if isinstance(getattr(self, "backbone", None), TimmFeatures):
            return self.backbone(x)
        h = self.stem((x - self.mean) / self.std)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: Tensor) -> Predictions:
        """Final predictions at the input size; ``.aux`` holds the 4 per-scale ones per task."""
        feats = self.backbone_features(x)
        task_feats: list[dict[str, Tensor]] = [{} for _ in range(N_SCALES)]
        carried: dict[str, Tensor] | None = None
        for s in reversed(range(N_SCALES)):
            size = feats[s].shape[-2:]
            for t in self.tasks:
                inp = feats[s] if carried is None else torch.cat([feats[s], upsample(carried[t], size)], dim=1)
                task_feats[s][t] = self.initial[s][t](inp)
            carried = self.propagation[s](task_feats[s]) if s > 0 else None
        finest = feats[0].shape[-2:]
        preds = {}
        aux: dict[str, list[Tensor]] = {}
        for t in self.tasks:
            head = self.heads[t]
            aux[t] = [head.aux[s](task_feats[s][t]) for s in range(N_SCALES)]
            distilled = [upsample(head.distill[s](task_feats[s]), finest) for s in range(N_SCALES)]
            preds[t] = upsample(head.final(torch.cat(distilled, dim=1)), x.shape[-2:])
        return Predictions(preds, aux)


@register("mtinet", tiny={"backbone": "resnet18", "channels": 8})
def mtinet(
    task_channels: dict[str, int],
    backbone: str = "resnet50",
    channels: int = 64,
    aux_weight: float = 1.0,
    pretrained: bool = False,
    backbone_args: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """MTI-Net (Vandenhende et al., ECCV 2020) at reduced scale, on ResNet stages 1-4.

    Args:
        task_channels: output channels per task.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (default), undilated, or
            ``"timm:<name>"``: a timm model's 4 deepest feature levels (``pip install densemtl[timm]``).
        channels: width of every task's features at every scale (64; 8-16 for CPU runs).
        aux_weight: weight of the per-scale deep-supervision losses (summed over the 4 scales);
            0 turns them off.
        pretrained: ImageNet weights for the backbone from torch's or timm's cache (see ``hps``).
        backbone_args: timm backbones only: extra ``timm.create_model`` keywords.

    Inputs should be at least 32×32 (the coarsest scale is 1/32); training needs batches of at
    least 2 images (batch norm).
    """
    check_common_knobs("mtinet", backbone, channels, aux_weight)
    extra = check_backbone_args("mtinet", backbone, backbone_args)
    return MtiNet(
        task_channels,
        backbone=backbone,
        channels=channels,
        aux_weight=aux_weight,
        pretrained=bool(pretrained),
        backbone_args=extra,
    )
