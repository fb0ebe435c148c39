"""Building blocks shared by the distillation architectures PAD-Net and MTI-Net.

- ``TaskFeatures``: a task's intermediate features (two residual blocks), the input both of its
  auxiliary prediction and of the distillation.
- ``Distillation``: attention-guided multi-modal distillation for one target task,
  PAD-Net's variant C (Xu et al., CVPR 2018, https://arxiv.org/abs/1805.04409) with the gate
  computed from the target's own features, or MTI-Net's form (Vandenhende et al., ECCV 2020,
  https://arxiv.org/abs/2001.06902) with one gate per source task computed from that source.
- ``DeepSupervision``: the auxiliary-loss bookkeeping. The engine's hook
  ``extra_losses(preds, batch)`` only sees the final predictions, so the auxiliary predictions of
  the latest forward are kept on the model and consumed by the next ``extra_losses`` call.
- ``resnet_stages``: a plain (undilated) torchvision ResNet split into its four stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from densemtl.errors import ConfigError
from densemtl.models.hps import BACKBONES, load_imagenet_weights, stage_width
from densemtl.tasks import LOSSES

GATES = ("target", "source")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Convolution (no bias: the batch norm has one), batch norm, ReLU; size-preserving."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def residual_block(in_channels: int, out_channels: int) -> BasicBlock:
    """torchvision's ResNet ``BasicBlock``, with a 1×1 conv-BN projection when the width changes."""
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    return BasicBlock(in_channels, out_channels, downsample=downsample)


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize to ``size`` (H, W); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class TaskFeatures(nn.Sequential):
    """A task's intermediate features: two residual blocks, ``in_channels`` -> ``channels``."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(residual_block(in_channels, channels), residual_block(channels, channels))


def prediction_head(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    """Final head: 3×3 conv-BN-ReLU to ``channels``, then a 1×1 conv to the task's outputs."""
    return nn.Sequential(conv_bn_relu(in_channels, channels), nn.Conv2d(channels, out_channels, 1))


class Distillation(nn.Module):
    """Attention-guided message passing into one target task ``t`` from every other task ``s``.

    ``gate="target"`` (PAD-Net, variant C): ``F_t + Σ_{s≠t} σ(W_t F_t) ⊙ (W_s F_s)``, one gate
    from the target's features shared by all messages. ``gate="source"`` (MTI-Net, eq. 1):
    ``F_t + Σ_{s≠t} σ(W_{s,t} F_s) ⊙ (W'_{s,t} F_s)``, a spatial attention per source. Every
    weight here is used for task ``t`` alone, so the whole module is ``t``'s parameter.
    """

    def __init__(self, target: str, tasks: Sequence[str], channels: int, gate: str = "target") -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.target = target
        self.gate = gate
        self.sources = tuple(s for s in tasks if s != target)
        self.messages = nn.ModuleDict({s: nn.Conv2d(channels, channels, 3, padding=1) for s in self.sources})
        if gate == "target":
            self.attention: nn.Module = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.attention = nn.ModuleDict({s: nn.Conv2d(channels, channels, 3, padding=1) for s in self.sources})

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        out = features[self.target]
        if not self.sources:
            return out
        if self.gate == "target":
            assert isinstance(self.attention, nn.Conv2d)
            g = torch.sigmoid(self.attention(out))
            return out + sum(g * self.messages[s](features[s]) for s in self.sources)
        assert isinstance(self.attention, nn.ModuleDict)
        return out + sum(
            torch.sigmoid(self.attention[s](features[s])) * self.messages[s](features[s]) for s in self.sources
        )


class DeepSupervision:
    """Mixin for models whose auxiliary predictions are supervised through ``extra_losses``.

    The forward pass calls ``_keep_aux({task: [aux predictions]}, preds)``; ``extra_losses``
    upsamples each stored prediction to its target's size, applies the task's loss from
    ``densemtl.tasks`` and returns ``aux_weight * Σ`` per task. The stored tensors are released
    by that call (and never pickled or deep-copied), so holding them costs nothing between steps.
    """

    aux_weight: float
    tasks: tuple[str, ...]
    _aux: dict[str, list[Tensor]] | None = None
    _aux_owner: Tensor | None = None

    def _keep_aux(self, aux: dict[str, list[Tensor]], preds: Mapping[str, Tensor]) -> None:
        # The first prediction tensor identifies the forward pass the auxiliary outputs belong to.
        self._aux = aux
        self._aux_owner = preds[self.tasks[0]]

    def auxiliary_predictions(self) -> dict[str, list[Tensor]]:
        """The auxiliary predictions of the latest forward (empty once ``extra_losses`` used them)."""
        return dict(self._aux or {})

    def extra_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``aux_weight`` × the summed losses of the auxiliary predictions, per task."""
        aux, owner = self._aux, self._aux_owner
        if aux is None or owner is None or owner is not preds.get(self.tasks[0]):
            raise RuntimeError(
                f"{type(self).__name__}.extra_losses needs the predictions of the model's latest forward "
                "(call it once per forward, with that forward's output)"
            )
        self._aux, self._aux_owner = None, None
        if self.aux_weight == 0:
            return {}
        out = {}
        for t in self.tasks:
            target = batch[t]
            loss = sum(LOSSES[t](upsample(p, target.shape[-2:]), target) for p in aux[t])
            out[t] = self.aux_weight * loss
        return out

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()  # type: ignore[misc]
        state.pop("_aux", None)
        state.pop("_aux_owner", None)
        return state


def check_positive_int(arch: str, knob: str, value: object) -> int:
    """``value`` as a positive int, else a ``ConfigError`` naming ``arch``'s ``knob``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{arch} knob {knob!r} must be a positive integer, got {value!r}")
    return value


def check_common_knobs(arch: str, backbone: object, channels: object, aux_weight: object) -> None:
    """The knobs PAD-Net and MTI-Net share: backbone name, feature width, auxiliary-loss weight."""
    if backbone not in BACKBONES:
        raise ConfigError(f"{arch} knob 'backbone' must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    check_positive_int(arch, "channels", channels)
    if (
        not isinstance(aux_weight, int | float)
        or isinstance(aux_weight, bool)
        or not aux_weight >= 0
        or aux_weight == float("inf")
    ):
        raise ConfigError(f"{arch} knob 'aux_weight' must be a finite number >= 0, got {aux_weight!r}")


def pretrained_error_for(arch: str, error: ConfigError) -> ConfigError:
    """``load_imagenet_weights``'s error, naming ``arch`` instead of hps."""
    return ConfigError(str(error).replace("hps knob", f"{arch} knob", 1))


def resnet_stages(backbone: str, pretrained: bool, arch: str) -> tuple[nn.Sequential, nn.ModuleList, list[int]]:
    """Stem (conv1, bn1, relu, maxpool) and stages layer1..layer4 at strides 4, 8, 16, 32, undilated.

    Returns the stem, the four stages and their output widths.
    """
    net = getattr(torchvision.models, BACKBONES[backbone][0])(weights=None)
    if pretrained:
        try:
            load_imagenet_weights(net, backbone)
        except ConfigError as e:
            raise pretrained_error_for(arch, e) from None
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
    widths = [stage_width(s) for s in stages]
    return stem, stages, widths
