"""A trained run, ready for inference: :func:`load_run` (also :func:`from_checkpoint`).

``densemtl.load_run(path)`` reads what ``densemtl train`` wrote (a run directory, one of its
``checkpoints/*.pt``, or a ``densemtl export`` ``.safetensors`` file) and returns a
:class:`LoadedRun`: the network in eval mode on the device asked for (the CPU by default), its
config, tasks, class count and input size. The file itself is read as tensors and plain values
only. The plugin modules the run recorded (``imports``) are imported first only with
``trust_imports=True`` (or when already imported): importing runs their code, so a file alone never
does; otherwise a one-line ConfigError names them. A missing path or a file that is not a densemtl
checkpoint is a one-line ConfigError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from densemtl.models.base import MultiTaskModel
from densemtl.plugins import allowed, load_plugins, refusal
from densemtl.tasks import TaskSet
from densemtl.training.builders import build_task_set, model_from_state, resolve_device
from densemtl.training.checkpoint import load_checkpoint, resolve_checkpoint
from densemtl.training.config import TrainConfig, parse_imports

__all__ = ["LoadedRun", "from_checkpoint", "load_run"]


@dataclass(frozen=True)
class LoadedRun:
    """A trained network and what it was trained on.

    ``model(x)`` maps an image batch (B, 3, H, W), float in [0, 1], to ``{task: prediction}``;
    ``size`` is the (H, W) the run trained at (None when the checkpoint does not say).
    """

    model: MultiTaskModel
    config: TrainConfig
    tasks: tuple[str, ...]
    num_classes: int
    size: tuple[int, int] | None
    epoch: int
    #: the checkpoint file read
    path: Path

    @property
    def task_set(self) -> TaskSet:
        """The run's tasks with the knobs it was trained with (its config's ``task_args`` over its
        dataset's defaults): pass it to ``densemtl.metrics.evaluate`` to score as the run did."""
        return build_task_set(self.config, self.tasks)


def load_run(path: str | Path, device: str | torch.device = "cpu", *, trust_imports: bool = False) -> LoadedRun:
    """The run at ``path`` (a run directory, a checkpoint ``.pt`` or an exported ``.safetensors``),
    its network in eval mode on ``device`` ("cpu", "cuda", "cuda:N" or "auto"). The plugin modules
    it names are imported only with ``trust_imports=True`` (or when imported already)."""
    file = resolve_checkpoint(path)
    state = load_checkpoint(file)
    config = state["config"]
    if isinstance(config, Mapping) and config.get("imports"):  # what registered its architecture, …
        names = parse_imports(config["imports"], f"checkpoint {file}: imports")
        missing = [n for n in names if not allowed(n)]
        if missing and not trust_imports:
            how = "pass trust_imports=True, or import them first"
            raise refusal(f"checkpoint {file}", missing, "the run was trained with them", how)
        load_plugins(names)
    model, cfg = model_from_state(state, file)
    model.to(resolve_device(str(device))).eval()
    size = state.get("size")
    return LoadedRun(
        model=model,
        config=cfg,
        tasks=tuple(state["tasks"]),
        num_classes=int(state["num_classes"]),
        size=(int(size[0]), int(size[1])) if size else None,
        epoch=int(state.get("epoch") or 0),
        path=file,
    )


def from_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, trust_imports: bool = False) -> LoadedRun:
    """The same as :func:`load_run` (the name other libraries use)."""
    return load_run(path, device, trust_imports=trust_imports)
