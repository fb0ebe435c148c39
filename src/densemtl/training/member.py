"""One trained network with everything that updates it: model, method, engine, optimizer, schedule.

A run trains the members its training scheme asks for (:mod:`densemtl.training.schemes`): one
network, or several that teach each other (MDML), each with its own balancing method instance,
engine and optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from densemtl.distributed import Comm
from densemtl.engine import Engine
from densemtl.engine.precision import Precision
from densemtl.models.sync_bn import convert_sync_bn
from densemtl.tasks import TaskSet
from densemtl.training.builders import build_method, build_model, build_optimizer
from densemtl.training.config import TrainConfig
from densemtl.training.objects import Parts, own_optimizer


@dataclass(frozen=True)
class MemberSpec:
    """What one member is: ``name`` ("" for the main network, whose records are the run's; it
    prefixes the member's records and names its checkpoint entry), its architecture and knobs
    (None: the config's), and the offset of its seed from the run's."""

    name: str = ""
    arch: str | None = None
    arch_args: Mapping[str, Any] | None = None
    seed_offset: int = 0


class Member:
    """Builds and holds the parts that train one network of a run, for the run's ``tasks``."""

    def __init__(
        self,
        cfg: TrainConfig,
        tasks: TaskSet,
        num_classes: int,
        device: torch.device,
        spec: MemberSpec | None = None,
        comm: Comm | None = None,
        precision: Precision | None = None,
        parts: Parts | None = None,
    ) -> None:
        spec = spec or MemberSpec()
        parts = parts or Parts()
        own = dataclasses.replace(
            cfg,
            arch=spec.arch or cfg.arch,
            arch_args=dict(cfg.arch_args if spec.arch_args is None else spec.arch_args),
            seed=cfg.seed + spec.seed_offset,
        )
        self.name, self.arch, self.arch_args, self.tasks = spec.name, own.arch, own.arch_args, tasks
        comm = comm or Comm()
        if parts.model is not None:
            self.model = parts.model.to(device)
        else:
            self.model = build_model(own, tasks, num_classes).to(device)
        #: whether batch-norm statistics are those of the global batch (``--sync-bn``)
        self.sync_bn = comm.active and cfg.sync_bn is not False
        if self.sync_bn:
            self.model = convert_sync_bn(self.model, device)  # type: ignore[assignment]
        comm.broadcast_([*self.model.parameters(), *self.model.buffers()])  # as DDP: rank 0's start
        self.method = parts.method or build_method(own.method, len(tasks), own.seed, own.method_args)
        self.engine = Engine(
            self.model,
            self.method,
            tasks,
            mode=cfg.grad_mode,
            recompute_every=cfg.recompute_every,
            comm=comm,
            precision=precision,
        )
        if parts.optimizer is not None:
            self.optimizer, self.scheduler = own_optimizer(parts, self.model, self.method, own.lr)
        else:
            self.optimizer, self.scheduler = build_optimizer(own, self.model, self.method)

    def key(self, field: str) -> str:
        """This member's name for a record field: "val" is the main network's "val", the peer's "peer_val"."""
        return f"{self.name}_{field}" if self.name else field

    def state(self) -> dict[str, Any]:
        gen = self.method.generator
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "method_generator": gen.get_state() if gen is not None else None,
            "engine": self.engine.state_dict(),
        }

    def restore(self, state: dict[str, Any], load: Callable[[str, Callable[[], Any]], Any] | None = None) -> None:
        """Load ``state`` (:meth:`state`) part by part; ``load(field, fn)`` runs each part's ``fn``
        (``train --resume`` names the field of a part that does not fit)."""
        run = load or (lambda _field, fn: fn())
        run("model", lambda: self.model.load_state_dict(state["model"]))
        run("optimizer", lambda: self.optimizer.load_state_dict(state["optimizer"]))
        run("scheduler", lambda: self.scheduler.load_state_dict(state["scheduler"]))
        run("method", lambda: self.method.load_state_dict(state["method"]))
        if state.get("method_generator") is not None and self.method.generator is not None:
            gen = self.method.generator
            run("method_generator", lambda: gen.set_state(state["method_generator"]))
        # A checkpoint from before Engine.state_dict keeps engine_step / engine_coefficients at the
        # top level, which Engine.load_state_dict also reads.
        run("engine", lambda: self.engine.load_state_dict(state.get("engine", state)))
