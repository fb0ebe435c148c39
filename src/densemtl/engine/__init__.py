"""Per-task gradients and the combined update: the engine the trainer calls each step."""

from densemtl.engine.core import Engine
from densemtl.engine.modes import MODES
from densemtl.engine.strategies import Forward, NonFiniteGradientError, StepResult

__all__ = ["MODES", "Engine", "Forward", "NonFiniteGradientError", "StepResult"]
