"""PAD-Net: multi-tasks guided prediction-and-distillation.

Xu, Ouyang, Wang and Sebe, "PAD-Net: Multi-Tasks Guided Prediction-and-Distillation Network for
Simultaneous Depth Estimation and Scene Parsing", CVPR 2018 (https://arxiv.org/abs/1805.04409).

1. A shared front-end: here the dilated ResNet of ``hps`` (output stride 8 by default), or the
   last feature map of a timm model (``backbone="timm:<name>"``, as in ``hps``).
2. Intermediate predictions: per task, features ``F_t`` (two residual blocks to ``channels``)
   and a 1×1 auxiliary prediction from them, supervised by the task's own loss (deep supervision).
3. Multi-modal distillation, the paper's attention-guided variant (C): for every target task t,
   ``F_t^o = F_t + Σ_{s≠t} σ(W_t F_t) ⊙ (W_s F_s)``.
4. Final heads (3×3 conv-BN-ReLU, 1×1 conv) on ``F_t^o``, upsampled to the input size.

Which parameters are whose: ``F_s`` feeds every target's distillation, so the intermediate
feature blocks reach every task's loss and are *shared* together with the backbone. Each task
owns (``heads[t]``) its auxiliary 1×1 prediction, its distillation branch (the gate ``W_t`` and
the messages ``W_s`` into t) and its final head. The shared representation is therefore the
concatenation of all tasks' intermediate features, (B, T·channels, H/8, W/8): ``encode`` computes
it and ``decode`` uses task-owned parameters only, so the engine's representation mode is valid.

Deep supervision: ``decode`` returns ``Predictions`` whose ``aux`` holds each task's auxiliary
prediction, and ``extra_losses(preds, batch)`` turns them into ``aux_weight`` × the task's loss,
which the engine adds to that task's loss. Iterating the predictions gives the tasks only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from densemtl.models import register
from densemtl.models._multiscale import DeepSupervision, Distillation, TaskFeatures, check_common_knobs
from densemtl.models.backbones import build_resnet, check_output_stride, register_imagenet_stats, stage_width
from densemtl.models.base import MultiTaskModel, Predictions
from densemtl.models.layers import prediction_head, upsample
from densemtl.models.timm_backbone import TimmFeatures, check_backbone_args, is_timm_backbone


class PadNetHead(nn.Module):
    """Everything task ``t`` owns: auxiliary prediction, distillation into t, final head."""

    def __init__(self, task: str, tasks: tuple[str, ...], channels: int, out_channels: int) -> None:
        super().__init__()
        self.aux = nn.Conv2d(channels, out_channels, 1)
        self.distill = Distillation(task, tasks, channels, gate="target")
        self.final = prediction_head(channels, channels, out_channels)


class PadNet(DeepSupervision, MultiTaskModel):
    """PAD-Net on a dilated ResNet; ``encode`` gives the concatenated intermediate features."""

    has_representation = True

    def __init__(
        self,
        task_channels: dict[str, int],
        *,
        backbone: str = "resnet50",
        output_stride: int = 8,
        channels: int = 256,
        aux_weight: float = 1.0,
        pretrained: bool = False,
        backbone_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task_channels)
        self.channels = channels
        self.aux_weight = float(aux_weight)
        if is_timm_backbone(backbone):
            self.backbone: nn.Module = TimmFeatures(
                backbone, "padnet", levels=1, output_stride=output_stride, pretrained=pretrained, extra=backbone_args
            )
            width, output_stride = self.backbone.channels[-1], self.backbone.reductions[-1]
        else:
            self.backbone = build_resnet(backbone, output_stride, pretrained, "padnet")
            width = stage_width(self.backbone.layer4)
        self.output_stride = output_stride
        self.features = nn.ModuleDict({t: TaskFeatures(width, channels) for t in self.tasks})
        self.heads = nn.ModuleDict({t: PadNetHead(t, self.tasks, channels, n) for t, n in self.task_channels.items()})
        register_imagenet_stats(self)

    def encode(self, x: Tensor) -> Tensor:
        """Intermediate features of every task, concatenated in task order: (B, T·channels, h, w)."""
        if isinstance(self.backbone, TimmFeatures):
            shared = self.backbone(x)[-1]
        else:
            shared = self.backbone((x - self.mean) / self.std)
        return torch.cat([self.features[t](shared) for t in self.tasks], dim=1)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> Predictions:
        """Final predictions at ``size``; ``.aux`` holds each task's intermediate prediction."""
        feats = dict(zip(self.tasks, rep.split(self.channels, dim=1), strict=True))
        aux = {t: [self.heads[t].aux(feats[t])] for t in self.tasks}
        preds = {t: upsample(self.heads[t].final(self.heads[t].distill(feats)), size) for t in self.tasks}
        return Predictions(preds, aux)


@register("padnet", tiny={"backbone": "resnet18", "channels": 8})
def padnet(
    task_channels: dict[str, int],
    backbone: str = "resnet50",
    output_stride: int = 8,
    channels: int = 256,
    aux_weight: float = 1.0,
    pretrained: bool = False,
    backbone_args: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """PAD-Net (Xu et al., CVPR 2018): intermediate predictions, attention distillation, final heads.

    Args:
        task_channels: output channels per task.
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (default, as in the papers),
            or ``"timm:<name>"``: a timm model's last feature map (``pip install densemtl[timm]``).
        output_stride: 8 (layer3 and layer4 dilated) or 16 (layer4 dilated); timm models that
            cannot dilate keep their own (ViT 16, Swin 32), as in hps.
        channels: width of the per-task intermediate features and heads (256; 8-32 for CPU runs).
        aux_weight: weight of the auxiliary (intermediate-prediction) losses; 0 turns them off.
        pretrained: ImageNet weights for the backbone from torch's or timm's cache (see ``hps``).
        backbone_args: timm backbones only: extra ``timm.create_model`` keywords.

    Training needs batches of at least 2 images (batch norm).
    """
    check_common_knobs("padnet", backbone, channels, aux_weight)
    check_output_stride("padnet", output_stride)
    extra = check_backbone_args("padnet", backbone, backbone_args)
    return PadNet(
        task_channels,
        backbone=backbone,
        output_stride=output_stride,
        channels=channels,
        aux_weight=aux_weight,
        pretrained=bool(pretrained),
        backbone_args=extra,
    )
