"""densemtl: multi-task learning for dense scene understanding.

One network predicts semantic segmentation, depth and surface normals; densemtl provides the
data, architectures, task-balancing methods, training loop and benchmarks around it.
The pipeline is data -> models -> tasks (losses) -> balancing -> training -> report.

From Python (docs/python.md): ``densemtl.backward(losses, shared_params, method)`` balances
one's own model's losses, ``densemtl.Balancer`` keeps a method across steps,
``densemtl.load_run(path)`` loads a trained run for inference, ``densemtl.Trainer`` and
``densemtl.TrainConfig`` train, and ``densemtl.methods`` lists and creates the methods. The
names are imported on first use, so that ``import densemtl`` stays light.
"""

from __future__ import annotations

import importlib

from densemtl.errors import ConfigError, DenseMTLError

# typing's own TYPE_CHECKING would import typing (a third of the package's import time)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from densemtl import data, methods, metrics, models, tasks
    from densemtl.api import Balancer, backward
    from densemtl.engine import NonFiniteGradientError, StepResult
    from densemtl.runs import LoadedRun, from_checkpoint, load_run
    from densemtl.training.config import TrainConfig
    from densemtl.training.trainer import Trainer

__version__ = "0.6.0"

#: public name -> the module that defines it (imported when the name is first read)
_LAZY: dict[str, str] = {
    "backward": "densemtl.api",
    "Balancer": "densemtl.api",
    "StepResult": "densemtl.engine",
    "NonFiniteGradientError": "densemtl.engine",
    "load_run": "densemtl.runs",
    "from_checkpoint": "densemtl.runs",
    "LoadedRun": "densemtl.runs",
    "Trainer": "densemtl.training.trainer",
    "TrainConfig": "densemtl.training.config",
}
_SUBMODULES = ("data", "methods", "metrics", "models", "tasks")

__all__ = [
    "Balancer",
    "ConfigError",
    "DenseMTLError",
    "LoadedRun",
    "NonFiniteGradientError",
    "StepResult",
    "TrainConfig",
    "Trainer",
    "__version__",
    "backward",
    "data",
    "from_checkpoint",
    "load_run",
    "methods",
    "metrics",
    "models",
    "tasks",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"densemtl.{name}")
    else:
        raise AttributeError(f"module 'densemtl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
