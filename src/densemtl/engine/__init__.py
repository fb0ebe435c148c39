"""Per-task gradients and the combined update: the engine the trainer calls each step."""

from densemtl.engine.core import Engine, NonFiniteGradientError, StepResult

__all__ = ["Engine", "NonFiniteGradientError", "StepResult"]
