"""One strategy per gradient source; the engine picks one from the method's requirements.

A new gradient source is one module here and one entry in ``STRATEGIES``; a new method never
touches this package.
"""

from __future__ import annotations

from densemtl.engine.strategies.base import (
    Context,
    Forward,
    GradientStrategy,
    NonFiniteGradientError,
    StepResult,
    Strategy,
)
from densemtl.engine.strategies.gramian import GramianStrategy
from densemtl.engine.strategies.loss import LossStrategy
from densemtl.engine.strategies.parameters import ParametersStrategy
from densemtl.engine.strategies.representation import RepresentationStrategy

#: ``--grad-mode`` -> the strategy that implements it, cheapest first
STRATEGIES: dict[str, type[Strategy]] = {
    s.mode: s for s in (LossStrategy, RepresentationStrategy, GramianStrategy, ParametersStrategy)
}

__all__ = [
    "STRATEGIES",
    "Context",
    "Forward",
    "GradientStrategy",
    "GramianStrategy",
    "LossStrategy",
    "NonFiniteGradientError",
    "ParametersStrategy",
    "RepresentationStrategy",
    "StepResult",
    "Strategy",
]
