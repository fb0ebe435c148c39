"""Building blocks of InvPT (``densemtl.models.invpt``): the padded timm backbone and the decoder.

- ``PaddedTimmFeatures``: four feature maps of a timm model for images in [0, 1]. Plain ViTs
  (one stride at every block) give the outputs of four evenly spaced blocks (ViT-S/B: 3, 6, 9,
  12 counting from 1; ViT-L: 6, 12, 18, 24), hierarchical models (Swin, CNNs) their 4 deepest
  stages. Inputs whose sides are not multiples of the model's stride are zero-padded (after
  normalisation, so the padding is the mean colour) at the bottom and right; the caller crops.
- ``JointBlock``: a pre-norm transformer block over the tokens of *all* tasks at once: every
  query attends to the keys and values of every task, which are first average-pooled by the
  stage's spatial-reduction ratio ``sr`` (as in PVTv2's linear SRA), so attention costs
  (T·N) × (T·N / sr²) rather than (T·N)². Its MLP has a depthwise 3×3 convolution on each task's
  map (the tokens' only positional signal besides the backbone's).
- ``DecoderStage``: one scale of the inverted pyramid: upsample ×2 and a 3×3 conv-BN-ReLU (shared
  by the tasks) to the stage's width (all but the first stage), add a projection of one backbone
  level resized to the stage's grid, add a learned embedding per task, then the joint blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models.layers import conv_bn_relu, upsample
from densemtl.models.timm_backbone import TIMM_PREFIX, TimmFeatures, check_file_free, import_timm, timm_model_name

ARCH = "invpt"
LEVELS = 4


def check_backbone_name(backbone: object) -> str:
    """The timm model name in ``backbone`` (``timm:<name>``); a one-line ``ConfigError`` otherwise."""
    if not isinstance(backbone, str) or not backbone.startswith(TIMM_PREFIX):
        raise ConfigError(
            f"{ARCH} knob 'backbone' must be a timm model, timm:<name> (e.g. timm:vit_small_patch16_224), "
            f"got {backbone!r}"
        )
    return timm_model_name(ARCH, backbone)


def feature_indices(name: str, extra: dict[str, Any]) -> int | tuple[int, ...]:
    """timm ``out_indices`` for ``name``: 4 evenly spaced blocks of a single-stride model (a plain
    ViT: its ``feature_info`` has one entry per block), else the 4 deepest levels. The model is
    built on the meta device to find out (no memory, no initialisation, no weights)."""
    for key, value in extra.items():
        check_file_free(ARCH, key, value)
    timm = import_timm(ARCH)
    probe_args = {k: v for k, v in extra.items() if k not in ("pretrained", "features_only", "out_indices")}
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **probe_args)
    except Exception as exc:  # timm's errors for keywords a model refuses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{ARCH} knob 'backbone': timm cannot build {name}: {first}") from None
    info = getattr(probe, "feature_info", None) or []
    reductions = {i.get("reduction") for i in info} if isinstance(info, list) else set()
    if len(reductions) == 1 and len(info) > LEVELS:
        depth = len(info)
        return tuple(depth * (k + 1) // LEVELS - 1 for k in range(LEVELS))
    return LEVELS


class PaddedTimmFeatures(TimmFeatures):
    """Four feature maps (NCHW, shallow to deep) of a timm model; see the module docstring. The
    image is zero-padded to a multiple of 16, of the patch and of the deepest stride, not resized."""

    def __init__(self, backbone: str, *, pretrained: bool, extra: dict[str, Any]) -> None:
        extra = dict(extra)
        extra.setdefault("out_indices", feature_indices(check_backbone_name(backbone), extra))
        super().__init__(backbone, ARCH, levels=LEVELS, pretrained=pretrained, extra=extra)
        #: the multiple every padded side must be
        self.multiple = math.lcm(16, *self.reductions, *self.divisor)

    def check_name(self, arch: str, backbone: str) -> str:
        return check_backbone_name(backbone)

    def window(self) -> int:
        """The largest attention window (in tokens) of a window-attention backbone (Swin: 7 or
        8), 1 for one that attends globally (ViT) or convolves."""
        sizes = [getattr(m, "window_size", None) for m in self.net.modules() if type(m).__name__.endswith("Block")]
        sides = [w if isinstance(w, int) else max(w) for w in sizes if isinstance(w, int | tuple | list) and w]
        return max(sides, default=1)

    def min_input_side(self) -> int:
        """The smallest input side: the deepest stride, times the attention window of a Swin (its
        last stage must hold one whole window: below that timm cuts the windows to the map and the
        model is not the one its weights were trained as)."""
        return max(self.reductions) * self.window()

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The size an (h, w) image is padded to (its own when both sides are multiples)."""
        return (math.ceil(h / self.multiple) * self.multiple, math.ceil(w / self.multiple) * self.multiple)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The 4 feature maps of ``x`` zero-padded (normalised) to :meth:`padded_size`."""
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        x = F.pad(x, (0, pw - w, 0, ph - h))
        if self.fixed_size is not None and self.fixed_size != (ph, pw):
            x = F.interpolate(x, size=self.fixed_size, mode="bilinear", align_corners=False)
        feats = self.net(x)
        feats = list(feats.values()) if isinstance(feats, dict) else list(feats)
        return [f.permute(0, 3, 1, 2) for f in feats] if self.nhwc else feats


class JointBlock(nn.Module):
    """Transformer block over the concatenated tokens of all tasks, with spatially reduced keys/values."""

    def __init__(self, dim: int, heads: int, sr: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.heads, self.sr = heads, sr
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.kv_norm = nn.LayerNorm(dim) if sr > 1 else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = dim * mlp_ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def _maps(self, x: Tensor, tasks: int, size: tuple[int, int]) -> Tensor:
        """Tokens (B, T·h·w, C) as per-task maps (B·T, C, h, w)."""
        b, _, c = x.shape
        return x.reshape(b * tasks, size[0], size[1], c).permute(0, 3, 1, 2)

    def _tokens(self, m: Tensor, batch: int) -> Tensor:
        """Per-task maps (B·T, C, h, w) as tokens (B, T·h·w, C)."""
        return m.flatten(2).transpose(1, 2).reshape(batch, -1, m.shape[1])

    def attention(self, x: Tensor, tasks: int, size: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        q = self.q(x)
        if self.sr > 1:
            reduced = (math.ceil(size[0] / self.sr), math.ceil(size[1] / self.sr))
            x = self.kv_norm(self._tokens(F.adaptive_avg_pool2d(self._maps(x, tasks, size), reduced), b))
        k, v = self.kv(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: Tensor, tasks: int, size: tuple[int, int]) -> Tensor:
        """``x``: (B, T·h·w, C), the tasks' tokens in task order, each task's in raster order."""
        x = x + self.attention(self.norm1(x), tasks, size)
        y = self.fc1(self.norm2(x))
        y = self._tokens(self.dwconv(self._maps(y, tasks, size)), x.shape[0])
        return x + self.fc2(F.gelu(y))


class DecoderStage(nn.Module):
    """One scale of the inverted pyramid (see the module docstring); shared by all tasks."""

    def __init__(
        self, tasks: int, in_dim: int, dim: int, backbone_dim: int, depth: int, heads: int, sr: int, up: bool
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.up = conv_bn_relu(in_dim, dim) if up else None
        self.fuse = nn.Sequential(nn.Conv2d(backbone_dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.task_embed = nn.Parameter(torch.zeros(tasks, dim))
        nn.init.trunc_normal_(self.task_embed, std=0.02)
        self.blocks = nn.ModuleList([JointBlock(dim, heads, sr) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, feature: Tensor, size: tuple[int, int]) -> Tensor:
        """``x``: the tasks' maps (B·T, C_in, h', w'), row i·T + t holding image i's task t;
        ``feature``: a backbone level (B, C_b, ·, ·). Returns the tasks' maps (B·T, C, h, w) at ``size``."""
        if self.up is not None:
            x = self.up(upsample(x, size))
        b, t = feature.shape[0], self.tasks
        fused = upsample(self.fuse(feature), size)
        c = fused.shape[1]
        x = x.reshape(b, t, c, *size) + fused.unsqueeze(1)
        tokens = x.flatten(3).transpose(2, 3) + self.task_embed[None, :, None, :]
        tokens = tokens.reshape(b, t * size[0] * size[1], c)
        for block in self.blocks:
            tokens = block(tokens, t, size)
        tokens = self.norm(tokens)
        return tokens.reshape(b * t, size[0], size[1], c).permute(0, 3, 1, 2).contiguous()


__all__ = ["ARCH", "LEVELS", "DecoderStage", "JointBlock", "PaddedTimmFeatures", "check_backbone_name"]
