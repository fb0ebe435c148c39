"""One trained network with everything that updates it: model, method, engine, optimizer, schedule.

A run trains one member, or two under mutual learning (MDML): the main network and its peer,
each with its own balancing method instance and optimizer.
"""

from __future__ import annotations

from typing import Any

import torch

from densemtl.engine import Engine
from densemtl.training.builders import build_method, build_model, build_optimizer
from densemtl.training.config import TrainConfig


class Member:
    """Builds and holds the parts that train one network of a run."""

    def __init__(
        self,
        cfg: TrainConfig,
        tasks: tuple[str, ...],
        num_classes: int,
        device: torch.device,
        *,
        arch: str | None = None,
        arch_args: dict[str, Any] | None = None,
        seed_offset: int = 0,
    ) -> None:
        import dataclasses

        own = dataclasses.replace(
            cfg,
            arch=arch or cfg.arch,
            arch_args=dict(cfg.arch_args if arch_args is None else arch_args),
            seed=cfg.seed + seed_offset,
        )
        self.model = build_model(own, tasks, num_classes).to(device)
        self.method = build_method(own, len(tasks))
        self.engine = Engine(self.model, self.method, tasks, mode=cfg.grad_mode, recompute_every=cfg.recompute_every)
        self.optimizer, self.scheduler = build_optimizer(own, self.model, self.method)

    def state(self) -> dict[str, Any]:
        gen = self.method.generator
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "method_generator": gen.get_state() if gen is not None else None,
            "engine_step": self.engine.step_count,
            "engine_coefficients": self.engine.coefficients,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        if state.get("method_generator") is not None and self.method.generator is not None:
            self.method.generator.set_state(state["method_generator"])
        self.engine.step_count = int(state.get("engine_step", 0))
        self.engine.coefficients = state.get("engine_coefficients")
