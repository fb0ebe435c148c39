"""Training schemes: how the members of a run learn together (:class:`Scheme`).

``single`` trains one network; ``mutual`` (MDML) trains the main network and its peer(s), each
mimicking the others. A new scheme, a third member or a teacher is a :class:`Scheme` subclass
given to ``Trainer(cfg, out, scheme=...)``; the trainer's loop does not change.
"""

from __future__ import annotations

from densemtl.training.config import TrainConfig
from densemtl.training.schemes.base import Scheme
from densemtl.training.schemes.mutual import Mutual, inherited_arch_args
from densemtl.training.schemes.single import Single


def scheme_for(cfg: TrainConfig) -> Scheme:
    """The scheme a config asks for: mutual learning when it names a peer architecture."""
    return Mutual(cfg) if cfg.peer_arch else Single(cfg)


__all__ = ["Mutual", "Scheme", "Single", "inherited_arch_args", "scheme_for"]
