"""HirMTL: hierarchical multi-task learning: scale-level sharing, task-adaptive fusion, task interchange.

Luo, Hu, Wei, He and Yu, "HirMTL: Hierarchical Multi-Task Learning for dense scene understanding",
Neural Networks 181 (2024) 106854 (https://doi.org/10.1016/j.neunet.2024.106854). No code or
equations are public: the modules follow the abstract, as specified in METHODS.md §3.

Three levels on the four stages of a torchvision ResNet (strides 4, 8, 16, 32):
- *scale level*: at each scale a shared 3×3 conv-BN-ReLU to ``channels``, then per task a light
  residual block (torchvision's ``BasicBlock``) that fine-tunes the shared features;
- *TAF* (task-adaptive fusion), per task: all scales upsampled to the finest, a small conv
  predicts per-pixel logits over the scales, softmax, weighted sum;
- *AICM* (asymmetric information comparison), per task t with F_o the mean of the other tasks'
  fused features: shared = σ(conv[F_t, F_o]) ⊙ F_o, unique = F_t − shared,
  out = F_t + conv(shared) + conv(unique); the gate and convs are task t's own (asymmetric).
  With one task there is no other task and the AICM is the identity.
Then each task's head (MTAN's: 3×3 conv, 1×1 conv; correction of issue 10: there used to be a ReLU
between them) at stride 4, upsampled bilinearly to the input.

Images in [0, 1] are normalised with the ImageNet mean and std. Outputs are raw.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densemtl.models import register
from densemtl.models._knobs import check_bool, check_positive_int
from densemtl.models.backbones import check_backbone, register_imagenet_stats, resnet_stages
from densemtl.models.base import MultiTaskModel
from densemtl.models.layers import conv_bn_relu, light_head, residual_block, task_head, upsample

N_SCALES = 4


class TaskAdaptiveFusion(nn.Module):
    """TAF: per-pixel softmax weights over scales from a small conv, weighted sum at the finest scale."""

    def __init__(self, channels: int, n_scales: int = N_SCALES) -> None:
        super().__init__()
        self.weigher = light_head(n_scales * channels, n_scales, channels)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        up = [feats[0], *(upsample(f, size) for f in feats[1:])]
        stacked = torch.stack(up, dim=1)  # B, S, C, H, W
        weights = torch.softmax(self.weigher(torch.cat(up, dim=1)), dim=1)  # B, S, H, W
        return (weights.unsqueeze(2) * stacked).sum(dim=1)


class AsymmetricComparison(nn.Module):
    """AICM for one task: split the other tasks' features into what task t shares and what it lacks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.shared_conv = conv_bn_relu(channels, channels)
        self.unique_conv = conv_bn_relu(channels, channels)

    def forward(self, own: Tensor, others: Tensor) -> Tensor:
        shared = torch.sigmoid(self.gate(torch.cat([own, others], dim=1))) * others
        unique = own - shared
        return own + self.shared_conv(shared) + self.unique_conv(unique)


class HirMTL(MultiTaskModel):
    """ResNet stages → shared per-scale convs → per-task residual blocks → TAF → AICM → heads.

    Task t's own parameters: its AICM and head, plus (with ``detach_peers`` or one task) its
    residual blocks and TAF. Without ``detach_peers`` the other tasks' AICMs read task t's fused
    features with gradient, so task t's blocks and TAF are trained by every task's loss and are
    declared shared (the engine gives task parameters their own task's gradient only).
    """

    has_representation = False

    def __init__(
        self,
        task_channels: dict[str, int],
        *,
        backbone: str = "resnet18",
        channels: int = 64,
        pretrained: bool = False,
        detach_peers: bool = False,
    ) -> None:
        super().__init__(task_channels)
        self.backbone_name = backbone
        self.detach_peers = detach_peers
        self.stem, self.stages, widths = resnet_stages(backbone, pretrained, "hirmtl", named_stem=True)
        self.scale_shared = nn.ModuleList(conv_bn_relu(w, channels) for w in widths)
        self.scale_task = nn.ModuleDict(
            {t: nn.ModuleList(residual_block(channels, channels) for _ in widths) for t in self.tasks}
        )
        self.taf = nn.ModuleDict({t: TaskAdaptiveFusion(channels, len(widths)) for t in self.tasks})
        # With one task there is nothing to compare with: no AICM, the fused features go to the head.
        peers = self.tasks if len(self.tasks) > 1 else ()
        self.aicm = nn.ModuleDict({t: AsymmetricComparison(channels) for t in peers})
        self.heads = nn.ModuleDict({t: task_head(channels, n) for t, n in self.task_channels.items()})
        register_imagenet_stats(self)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Task ``task``'s head and AICM; also its residual blocks and TAF when no other task reads them."""
        if task not in self.heads:
            return []
        own = [*self.heads[task].parameters()]
        if task in self.aicm:
            own += list(self.aicm[task].parameters())
        if self.detach_peers or len(self.tasks) == 1:
            own += [*self.scale_task[task].parameters(), *self.taf[task].parameters()]
        return own

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        x = self.stem((x - self.mean) / self.std)
        shared = []
        for stage, conv in zip(self.stages, self.scale_shared, strict=True):
            x = stage(x)
            shared.append(conv(x))
        fused = {
            t: self.taf[t]([block(f) for block, f in zip(self.scale_task[t], shared, strict=True)]) for t in self.tasks
        }
        refined = fused
        if len(self.tasks) > 1:
            refined = {}
            for t in self.tasks:
                others = torch.stack([fused[u] for u in self.tasks if u != t]).mean(dim=0)
                refined[t] = self.aicm[t](fused[t], others.detach() if self.detach_peers else others)
        return {t: upsample(self.heads[t](refined[t]), size) for t in self.tasks}


@register("hirmtl", tiny={"backbone": "resnet18", "channels": 8})
def hirmtl(
    task_channels: dict[str, int],
    backbone: str = "resnet18",
    channels: int = 64,
    pretrained: bool = False,
    detach_peers: bool = False,
) -> MultiTaskModel:
    """HirMTL (Luo et al., Neural Networks 2024); the modules follow the abstract (no public code).

    Our interpretation (METHODS.md §3): ResNet stages 1-4 as the four scales, BasicBlocks as the
    task refinement, F_o = mean of the other tasks' fused features.

    Args:
        task_channels: output channels per task.
        backbone: ``"resnet18"`` (default, the lighter one), ``"resnet34"`` or ``"resnet50"``.
        channels: width of every scale's features, of TAF, AICM and the heads (8-16 for CPU runs).
        pretrained: load ImageNet weights from torch's cache ($TORCH_HOME/hub/checkpoints).
        detach_peers: AICM reads the other tasks' features without gradient, so each task's
            residual blocks and TAF are trained by its own loss only (and count as its own).
    """
    check_backbone("hirmtl", backbone)
    check_positive_int("hirmtl", "channels", channels)
    check_bool("hirmtl", "pretrained", pretrained)
    check_bool("hirmtl", "detach_peers", detach_peers)
    return HirMTL(task_channels, backbone=backbone, channels=channels, pretrained=pretrained, detach_peers=detach_peers)
