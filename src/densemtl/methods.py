"""Alias of ``densemtl.balancing``: ``densemtl.methods.available()`` and ``create(name, **kw)``."""

from densemtl.balancing import (  # noqa: F401
    METHODS,
    Aggregator,
    BalancingMethod,
    GramianWeighting,
    LossWeighting,
    OptimizerMethod,
    Requirements,
    available,
    create,
    register,
)
