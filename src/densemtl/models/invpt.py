"""InvPT: an inverted-pyramid multi-task transformer on a timm ViT (or Swin) backbone.

Ye and Xu, "Inverted Pyramid Multi-task Transformer for Dense Scene Understanding", ECCV 2022
(https://arxiv.org/abs/2203.07997). Our own implementation of the paper's design:

1. Backbone: a timm model (``backbone="timm:<name>"``, default ViT-S/16) giving four feature
   levels ``f_0..f_3`` (``_invpt_blocks.PaddedTimmFeatures``): a plain ViT's outputs of four
   evenly spaced blocks, all at stride 16; a Swin's or CNN's stages at strides 4 to 32. Images
   whose sides are not multiples of 16 (or of the backbone's stride) are padded; every
   prediction is cropped back to the input size.
2. Task-specific preliminary decoders: per task t, features ``F_t`` (two 3×3 conv-BN-ReLU of
   width ``embed_dim``) from the deepest level ``f_3`` at 1/16, and a 1×1 preliminary
   prediction from ``F_t``, deep-supervised with the task's own loss × ``aux_weight``.
3. The inverted-pyramid decoder, 3 stages at 1/16, 1/8 and 1/4 of the (padded) input, of widths
   ``embed_dim``, ``embed_dim/2``, ``embed_dim/4``: between stages every task's map is upsampled
   ×2 and narrowed by a 3×3 conv-BN-ReLU; at each stage a projection of one backbone level
   (``f_2``, ``f_1``, ``f_0``: deeper levels at coarser stages) is added to every task's map
   (cross-scale fusion), a learned task embedding is added to each task's tokens, and
   ``depths[s]`` transformer blocks attend jointly over the tokens of ALL tasks, with keys and
   values average-pooled by ``sr_ratios[s]`` (spatial reduction; default 2, 4, 8 keeps them at
   1/32 of the input at every stage, so memory grows linearly with the pixels).
4. Final heads: per task, a 3×3 conv-BN-ReLU and a 1×1 conv on its 1/4 map, upsampled to the
   input size.

Departures from the paper: no attention message passing between stages, a bilinear + conv
upsampling instead of its patch-expansion convolutions, spatial reduction by average pooling,
and the preliminary predictions are supervised but not fed to the decoder (the paper
concatenates them to the features), so each stays its task's own parameter.

Which parameters are whose: the joint attention mixes the tasks, so everything that feeds it
reaches every task's loss: the backbone, the preliminary *feature* blocks ``F_t`` and the
decoder are shared. Each task owns (``heads[t]``) its preliminary 1×1 prediction and its final
head; a task's loss reaches another task's parameters only through the shared decoder.

Representation mode: there is no single shared tensor after which only task-owned layers run
(the preliminary predictions branch off before the decoder, whose output is T maps), so
``has_representation = False``: gradient methods use the parameters mode (or the Gramian's),
loss weightings the loss mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models import register
from densemtl.models._invpt_blocks import ARCH, DecoderStage, PaddedTimmFeatures, check_backbone_name
from densemtl.models._knobs import check_bool, check_finite_nonnegative, check_positive_int
from densemtl.models._multiscale import DeepSupervision
from densemtl.models.base import MultiTaskModel, Predictions
from densemtl.models.layers import conv_bn_relu, prediction_head, upsample
from densemtl.models.timm_backbone import check_backbone_args

N_STAGES = 3
#: The representation modes ``densemtl list -v`` prints (see the module docstring).
MODES_NOTE = "loss, gramian, parameters (no single shared representation: tasks attend to each other)"


class InvPTHead(nn.Module):
    """Everything task ``t`` owns: its preliminary 1×1 prediction and its final head."""

    def __init__(self, channels: int, final_channels: int, out_channels: int) -> None:
        super().__init__()
        self.aux = nn.Conv2d(channels, out_channels, 1)
        self.final = prediction_head(final_channels, final_channels, out_channels)


class InvPT(DeepSupervision, MultiTaskModel):
    """InvPT on a timm backbone; ``extra_losses`` (``DeepSupervision``) scores ``preds.aux``."""

    has_representation = False
    modes_note = MODES_NOTE

    def __init__(
        self,
        task_channels: dict[str, int],
        *,
        backbone: str,
        embed_dim: int,
        num_heads: Sequence[int],
        depths: Sequence[int],
        sr_ratios: Sequence[int],
        aux_weight: float,
        pretrained: bool,
        backbone_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task_channels)
        self.aux_weight = float(aux_weight)
        self.backbone = PaddedTimmFeatures(backbone, pretrained=pretrained, extra=backbone_args or {})
        widths = [embed_dim >> s for s in range(N_STAGES)]
        deepest = self.backbone.channels[-1]
        self.preliminary = nn.ModuleDict(
            {t: nn.Sequential(conv_bn_relu(deepest, embed_dim), conv_bn_relu(embed_dim, embed_dim)) for t in self.tasks}
        )
        n = len(self.tasks)
        self.stages = nn.ModuleList(
            [
                DecoderStage(
                    n,
                    widths[max(s - 1, 0)],
                    widths[s],
                    self.backbone.channels[N_STAGES - 1 - s],
                    depths[s],
                    num_heads[s],
                    sr_ratios[s],
                    up=s > 0,
                )
                for s in range(N_STAGES)
            ]
        )
        self.heads = nn.ModuleDict({t: InvPTHead(embed_dim, widths[-1], c) for t, c in self.task_channels.items()})

    def min_input_side(self) -> int:
        """The backbone's deepest stride, times its attention window for a Swin (7 x 32 = 224)."""
        return self.backbone.min_input_side()

    @property
    def min_input_hint(self) -> str:
        """Why :meth:`min_input_side` is what it is (for the one-line refusal of a smaller ``--size``)."""
        window = self.backbone.window()
        deepest = max(self.backbone.reductions)
        if window > 1:
            return f"timm:{self.backbone.name} attends in {window}x{window} windows at stride {deepest}"
        return f"timm:{self.backbone.name} has stride {deepest}"

    def forward(self, x: Tensor) -> Predictions:
        """Final predictions at the input size; ``.aux`` holds each task's preliminary one."""
        h, w = x.shape[-2:]
        padded = self.backbone.padded_size(h, w)
        feats = self.backbone(x)
        grid = (padded[0] // 16, padded[1] // 16)
        deepest = upsample(feats[-1], grid)
        prelim = {t: self.preliminary[t](deepest) for t in self.tasks}
        aux = {t: [upsample(self.heads[t].aux(prelim[t]), padded)[..., :h, :w]] for t in self.tasks}
        maps = torch.stack([prelim[t] for t in self.tasks], dim=1).flatten(0, 1)  # (B·T, C, h, w)
        for s, stage in enumerate(self.stages):
            maps = stage(maps, feats[N_STAGES - 1 - s], (grid[0] << s, grid[1] << s))
        per_task = maps.reshape(x.shape[0], len(self.tasks), *maps.shape[1:]).unbind(1)
        preds = {
            t: upsample(self.heads[t].final(m), padded)[..., :h, :w] for t, m in zip(self.tasks, per_task, strict=True)
        }
        return Predictions(preds, aux)


def _per_stage(knob: str, value: object) -> tuple[int, ...]:
    """A positive int (the same at every stage) or a list of ``N_STAGES`` positive ints."""
    values = [value] * N_STAGES if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(values, list | tuple) and len(values) == N_STAGES
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):  # type: ignore[union-attr]
        raise ConfigError(
            f"{ARCH} knob {knob!r} must be a positive integer or a list of {N_STAGES} (one per stage), got {value!r}"
        )
    return tuple(values)  # type: ignore[arg-type]


@register(
    "invpt",
    tiny={
        "backbone": "timm:vit_tiny_patch16_224",
        "backbone_args": {"embed_dim": 24, "depth": 4, "num_heads": 2},
        "embed_dim": 16,
        "num_heads": (2, 2, 1),
        "depths": (1, 1, 1),
    },
)
def invpt(
    task_channels: dict[str, int],
    backbone: str = "timm:vit_small_patch16_224",
    embed_dim: int = 256,
    num_heads: Sequence[int] = (8, 4, 2),
    depths: Sequence[int] = (2, 2, 2),
    sr_ratios: Sequence[int] = (2, 4, 8),
    aux_weight: float = 1.0,
    pretrained: bool = False,
    backbone_args: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """InvPT (Ye & Xu, ECCV 2022): joint multi-task attention at 1/16, 1/8 and 1/4.

    Args:
        task_channels: output channels per task.
        backbone: ``"timm:<name>"``, a timm ViT (default ``vit_small_patch16_224``; the paper's
            best is ``vit_large_patch16_384``) or Swin; needs ``pip install densemtl[timm]``.
        embed_dim: decoder width at 1/16; halved at 1/8 and again at 1/4 (a multiple of 4;
            the paper: 512 with ViT-L; 16-32 for CPU runs).
        num_heads: attention heads per stage (one int for all), each dividing its stage's width.
        depths: joint transformer blocks per stage (one int for all).
        sr_ratios: spatial reduction of keys and values per stage (one int for all; 1: none).
        aux_weight: weight of the preliminary predictions' losses; 0 turns them off.
        pretrained: the backbone's ImageNet weights, from the Hugging Face cache or downloaded
            (a one-line error says where to put them when neither works).
        backbone_args: extra ``timm.create_model`` keywords (e.g. ``{embed_dim: 48, depth: 4,
            num_heads: 2}`` for a tiny ViT, ``{drop_path_rate: 0.1}``).

    Training needs batches of at least 2 images (batch norm). Gradient methods run in the
    parameters or gramian mode: the model has no single shared representation.
    """
    check_backbone_name(backbone)
    dim = check_positive_int(ARCH, "embed_dim", embed_dim)
    if dim % 4:
        raise ConfigError(f"{ARCH} knob 'embed_dim' must be a multiple of 4 (halved twice), got {embed_dim!r}")
    heads = _per_stage("num_heads", num_heads)
    for s, (width, h) in enumerate(zip((dim, dim // 2, dim // 4), heads, strict=True)):
        if width % h:
            raise ConfigError(
                f"{ARCH} knob 'num_heads': stage {s + 1} has width {width} (embed_dim/{1 << s}), "
                f"which {h} heads do not divide"
            )
    return InvPT(
        task_channels,
        backbone=backbone,
        embed_dim=dim,
        num_heads=heads,
        depths=_per_stage("depths", depths),
        sr_ratios=_per_stage("sr_ratios", sr_ratios),
        aux_weight=check_finite_nonnegative(ARCH, "aux_weight", aux_weight),
        pretrained=check_bool(ARCH, "pretrained", pretrained),
        backbone_args=check_backbone_args(ARCH, backbone, backbone_args),
    )
