"""Task-balancing methods: ``create(name, **kw)`` and ``available()``.

A new method is one module here, with a class decorated with ``@register("name")`` (and
``tiny={...}``, the knobs that make it fast in tests, if any) that declares what it needs in
``requirements`` (:class:`~densemtl.balancing.base.Requirements`), and its name in
:data:`BUILT_IN` below: the module is imported when the method is first looked up.
See ``densemtl.balancing.base`` for the three helper bases (loss weightings, gradient
aggregators, optimizers).
"""

from __future__ import annotations

from typing import Any

from densemtl.balancing.base import (
    Aggregator,
    BalancingMethod,
    GramianWeighting,
    LossWeighting,
    OptimizerMethod,
    Requirements,
    protocol_gap,
)
from densemtl.registry import Registry

METHODS: Registry[BalancingMethod] = Registry("method", returns=BalancingMethod, check=protocol_gap)
register = METHODS.register


def available() -> list[str]:
    return METHODS.available()


def create(name: str, **kwargs: Any) -> BalancingMethod:
    return METHODS.create(name, **kwargs)


#: The methods of this package, each registered by the module of its name (one file = one method).
BUILT_IN = (
    "acg", "alignedmtl", "cagrad", "dbmtl", "dwa", "ew", "excessmtl", "fairgrad", "famo", "gls", "graddrop",
    "gradnorm", "gradvac", "imtl", "mao", "mgda", "moco", "modo", "nashmtl", "pcgrad", "rlw", "sdmgrad", "stch",
    "upgrad", "uw",
)  # fmt: skip
for _name in BUILT_IN:
    METHODS.lazy(_name, f"{__name__}.{_name}")

#: LibMTL's names of the methods it shares with densemtl (``LibMTL/weighting/__init__.py``), taken
#: as they are: the registry matches names in any case and without underscores or dashes, so
#: ``--method Nash_MTL`` is ``nashmtl`` and config.yaml says ``nashmtl``. LibMTL's ``IMTL`` is its
#: hybrid IMTL (IMTL-L and IMTL-G); densemtl's ``imtl`` is IMTL-G (also ``IMTL_G``).
LIBMTL_NAMES = (
    "EW",
    "GradNorm",
    "MGDA",
    "UW",
    "DWA",
    "GLS",
    "GradDrop",
    "PCGrad",
    "GradVac",
    "IMTL",
    "CAGrad",
    "Nash_MTL",
    "RLW",
    "MoCo",
    "Aligned_MTL",
    "DB_MTL",
    "STCH",
    "ExcessMTL",
    "FairGrad",
    "FAMO",
    "MoDo",
    "SDMGrad",
    "UPGrad",
)
METHODS.alias("IMTL_G", "imtl")

__all__ = [
    "BUILT_IN",
    "LIBMTL_NAMES",
    "METHODS",
    "Aggregator",
    "BalancingMethod",
    "GramianWeighting",
    "LossWeighting",
    "OptimizerMethod",
    "Requirements",
    "available",
    "create",
    "register",
]
