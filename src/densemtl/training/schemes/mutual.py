"""Deep mutual learning between multi-task networks (MDML).

Each of the K members k is trained on its own task losses, balanced by its own method, plus
alpha times the mimicry losses towards the other members' detached predictions, averaged over
them (Zhang et al., eq. 10, for K > 2 networks):

    L_k = sum_t lambda_t L_sup,t(k) + alpha / (K - 1) * sum_{l != k} sum_t L_mim,t(k || l)

with the task's mimicry loss from :func:`densemtl.training.mimicry.mimicry_losses` (KL with
temperature for segmentation, L1 for depth, 1 - cos for normals) and alpha ramped linearly from
0 over ``alpha_warmup_epochs``. Every member forwards the batch, then each backwards in member
order; each has its own method, engine and optimizer, and its own seed (run seed + its index).
Xiao et al., J. Zhejiang Univ. (Eng. Sci.) 2026 (MDML), built as deep mutual learning (Zhang,
Xiang, Hospedales, Lu, CVPR 2018, https://arxiv.org/abs/1706.00384).

The peer of a config (``peer_arch``) inherits the main network's ``arch_args``: all of them
when it has the same architecture; for another architecture only the knobs its factory takes
(a knob of one family may mean something else, or nothing, in another). ``peer_args`` override
them key by key.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from densemtl import models as model_registry
from densemtl.engine import Forward, StepResult
from densemtl.errors import ConfigError
from densemtl.training.config import TrainConfig
from densemtl.training.member import Member, MemberSpec
from densemtl.training.mimicry import mimicry_losses
from densemtl.training.schemes.base import Scheme


def inherited_arch_args(cfg: TrainConfig, arch: str, own: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of a member of architecture ``arch``: the main network's (those ``arch``'s
    factory takes when it is another architecture), with ``own`` over them."""
    base = dict(cfg.arch_args)
    if arch.lower() != cfg.arch.lower():
        accepted = model_registry.MODELS.knobs(arch)
        base = {k: v for k, v in base.items() if k in accepted}
    return {**base, **own}


class Mutual(Scheme):
    """The main network and ``peers`` (default: the config's ``peer_arch``) teach each other."""

    def __init__(self, cfg: TrainConfig, peers: Sequence[MemberSpec] | None = None) -> None:
        super().__init__(cfg)
        if peers is None:
            if not cfg.peer_arch:
                raise ConfigError("mutual learning needs a peer network: set peer_arch (--peer-arch)")
            args = inherited_arch_args(cfg, cfg.peer_arch, cfg.peer_args)
            peers = [MemberSpec("peer", cfg.peer_arch, args, seed_offset=1)]
        names = [p.name for p in peers]
        if not peers or "" in names or len(set(names)) < len(names):
            raise ValueError(f"mutual learning needs one or more peers with distinct non-empty names, got {names}")
        self.peers = list(peers)
        self.alpha = 0.0

    def members(self) -> list[MemberSpec]:
        return [MemberSpec(), *self.peers]

    def mimicry_weight(self, epoch: int) -> float:
        """Alpha of ``epoch``, ramped linearly from 0 over ``alpha_warmup_epochs`` epochs."""
        warm = self.cfg.alpha_warmup_epochs
        return self.cfg.mimicry_weight * (min(1.0, (epoch - 1) / warm) if warm > 0 else 1.0)

    def start_epoch(self, epoch: int) -> None:
        self.alpha = self.mimicry_weight(epoch)

    def step(self, members: Sequence[Member], batch: dict[str, Tensor]) -> list[StepResult]:
        fwds = [m.engine.forward(batch) for m in members]
        scale = self.alpha / (len(members) - 1)
        extras = [self._mimicry(k, fwds, batch, members[k].tasks, scale) for k in range(len(members))]
        return [m.engine.backward(f, e) for m, f, e in zip(members, fwds, extras, strict=True)]

    def _mimicry(
        self, k: int, fwds: list[Forward], batch: dict[str, Tensor], tasks: tuple[str, ...], scale: float
    ) -> list[Tensor]:
        """Member ``k``'s T mimicry losses, ``scale`` times their sum over the other members."""
        tau = self.cfg.mimicry_temperature
        per_peer = [
            [scale * loss for loss in mimicry_losses(fwds[k].preds, f.preds, batch, tasks, tau)]
            for j, f in enumerate(fwds)
            if j != k
        ]
        return [functools.reduce(operator.add, parts) for parts in zip(*per_peer, strict=True)]

    def record(self) -> dict[str, Any]:
        return {"mimicry_weight": self.alpha}
