"""Training schemes: how the members of a run learn together (:class:`Scheme`), by name.

``single`` trains one network; ``mutual`` (MDML) trains the main network and its peer(s), each
mimicking the others. The scheme of a run is ``cfg.scheme`` (``--scheme``; by default ``mutual``
when ``--peer-arch`` is given, else ``single``); its knobs are config keys declared with
``scheme=`` in the spec (``--scheme-arg peer_arch=segnet`` is ``--peer-arch segnet``). A new
scheme, a third member or a teacher is a :class:`Scheme` subclass registered in :data:`SCHEMES`
(its factory takes the config and, as keywords, ``cfg.scheme_args``) or given to
``Trainer(cfg, out, scheme=...)``; the trainer's loop does not change.
"""

from __future__ import annotations

from densemtl.registry import Registry
from densemtl.training.config import TrainConfig
from densemtl.training.schemes.base import Scheme
from densemtl.training.schemes.mutual import Mutual, inherited_arch_args
from densemtl.training.schemes.single import Single

#: The training schemes by name: each factory takes ``cfg`` and the scheme's own knobs.
SCHEMES: Registry[Scheme] = Registry("scheme", returns=Scheme)
SCHEMES.register("single")(Single)
SCHEMES.register("mutual")(Mutual)


def scheme_for(cfg: TrainConfig) -> Scheme:
    """The scheme a config asks for (``cfg.scheme``); an unknown name is one line with the valid ones."""
    return SCHEMES.create(cfg.scheme or ("mutual" if cfg.peer_arch else "single"), cfg=cfg, **cfg.scheme_args)


__all__ = ["SCHEMES", "Mutual", "Scheme", "Single", "inherited_arch_args", "scheme_for"]
