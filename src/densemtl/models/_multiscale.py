"""Building blocks shared by the distillation architectures PAD-Net and MTI-Net.

- ``TaskFeatures``: a task's intermediate features (two residual blocks), the input both of its
  auxiliary prediction and of the distillation.
- ``Distillation``: attention-guided multi-modal distillation for one target task,
  PAD-Net's variant C (Xu et al., CVPR 2018, https://arxiv.org/abs/1805.04409) with the gate
  computed from the target's own features, or MTI-Net's form (Vandenhende et al., ECCV 2020,
  https://arxiv.org/abs/2001.06902) with one gate per source task computed from that source.
- ``DeepSupervision``: the auxiliary losses. The forward returns ``Predictions`` whose ``aux``
  holds the auxiliary predictions; the engine's hook ``extra_losses(preds, batch)`` scores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from densemtl.models._knobs import check_finite_nonnegative, check_positive_int
from densemtl.models.backbones import check_backbone
from densemtl.models.layers import residual_block, upsample
from densemtl.tasks import TaskSet, as_task_set

GATES = ("target", "source")


class TaskFeatures(nn.Sequential):
    """A task's intermediate features: two residual blocks, ``in_channels`` -> ``channels``."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(residual_block(in_channels, channels), residual_block(channels, channels))


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
    """Mixin: ``extra_losses`` scores the auxiliary predictions the forward returned in ``preds.aux``.

    For each task t with target y_t and auxiliary predictions a_{t,1..k} (at lower resolution):

        extra_t = aux_weight · Σ_i L_t(upsample(a_{t,i}, size(y_t)), y_t)

    with L_t the task's own loss (the run's configured task, ``tasks[t].loss``; the model's tasks
    with their defaults when ``tasks`` is None), as in PAD-Net's and MTI-Net's deep supervision.
    The engine adds ``extra_t`` to task t's loss.
    """

    aux_weight: float
    tasks: tuple[str, ...]

    def extra_losses(
        self, preds: dict[str, Tensor], batch: dict[str, Tensor], tasks: TaskSet | None = None
    ) -> dict[str, Tensor]:
        """``aux_weight`` × the summed losses of the auxiliary predictions in ``preds.aux``, per task."""
        if self.aux_weight == 0:
            return {}
        aux = getattr(preds, "aux", None)
        if aux is None or any(t not in aux for t in self.tasks):
            raise RuntimeError(
                f"{type(self).__name__}.extra_losses needs the Predictions its forward returned "
                "(with their .aux), not a copy of the task predictions"
            )
        task_set = tasks if tasks is not None else as_task_set(self.tasks)
        out = {}
        for t in self.tasks:
            target = batch[t]
            loss_fn = task_set[t].loss
            loss = sum(loss_fn(upsample(p, target.shape[-2:]), target) for p in aux[t])
            out[t] = self.aux_weight * loss
        return out


def check_common_knobs(arch: str, backbone: object, channels: object, aux_weight: object) -> None:
    """The knobs PAD-Net and MTI-Net share: backbone name, feature width, auxiliary-loss weight."""
    check_backbone(arch, backbone)
    check_positive_int(arch, "channels", channels)
    check_finite_nonnegative(arch, "aux_weight", aux_weight)
