"""Per-task gradients and the combined update: the engine the trainer calls each step."""

from densemtl.engine.core import Engine, Forward, NonFiniteGradientError, StepResult

__all__ = ["Engine", "Forward", "NonFiniteGradientError", "StepResult"]
