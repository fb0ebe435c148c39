"""Single-task baseline: one independent network per task, nothing shared.

Each task gets its own full copy of a base architecture (any registered one except ``single``)
built for that task alone. The baseline that Δm% is measured against; training it with any
balancing method is the same as training the T networks separately, since their parameters
and losses never meet.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from densemtl.errors import ConfigError
from densemtl.models import MODELS, register
from densemtl.models.base import MultiTaskModel


class SingleTaskNetworks(MultiTaskModel):
    """A ``ModuleDict`` of per-task networks behind the multi-task interface."""

    has_representation = False

    def __init__(self, task_channels: dict[str, int], base: str, base_args: dict[str, Any]) -> None:
        super().__init__(task_channels)
        self.base = base
        self.nets = nn.ModuleDict(
            {t: MODELS.create(base, task_channels={t: c}, **base_args) for t, c in self.task_channels.items()}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {t: self.nets[t](x)[t] for t in self.tasks}

    def min_input_side(self) -> int:
        return max(net.min_input_side() for net in self.nets.values())  # type: ignore[operator]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """All of ``task``'s own network."""
        if task not in self.nets:
            return []
        return [p for p in self.nets[task].parameters() if p.requires_grad]


@register("single", tiny={"base": "segnet", "base_args": {"width": 0.125, "depth_stages": 3}})
def single(
    task_channels: dict[str, int],
    base: str = "segnet",
    base_args: dict[str, Any] | None = None,
) -> MultiTaskModel:
    """One independent ``base`` network per task (the single-task baseline).

    Args:
        task_channels: output channels per task.
        base: a registered architecture name, e.g. ``"segnet"`` or ``"hps"``.
        base_args: knobs passed to the base factory, e.g. ``{"width": 0.25}``; checked there.
    """
    if str(base).lower() == "single":
        raise ConfigError("single knob 'base' must be another architecture, not 'single'")
    if base_args is None:
        base_args = {}
    if not isinstance(base_args, dict):
        raise ConfigError(f"single knob 'base_args' must be a mapping of knobs, got {base_args!r}")
    if "task_channels" in base_args:
        raise ConfigError("single knob 'base_args' must not set task_channels")
    MODELS.get(base)  # unknown base -> ConfigError listing the valid ones
    return SingleTaskNetworks(task_channels, str(base).lower(), dict(base_args))
