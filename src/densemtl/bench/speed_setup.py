"""What the speed benchmark times on: its settings (checked as ``train`` checks them), the
synthetic batch, the method specs, the optimizer each row gets and the machine it runs on.

:mod:`densemtl.bench.speed` does the timing; the names here are re-exported from it.
"""

from __future__ import annotations

import inspect
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from densemtl import data as data_registry
from densemtl import methods as method_registry
from densemtl.balancing.base import BalancingMethod
from densemtl.bench.targets import BASELINE
from densemtl.distributed import Comm
from densemtl.engine import MODES, Engine
from densemtl.engine.modes import canonical_mode, valid_modes
from densemtl.engine.precision import Precision
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import as_task_set
from densemtl.training.builders import build_optimizer, data_knobs, resolve_device
from densemtl.training.config import TrainConfig, parse_kv, parse_size

#: the dataset every row is timed on; its tasks are the default ``tasks``
DATASET = "synthetic"
#: architecture knobs used when none are given: the small default model of the benchmark
DEFAULT_ARCH_ARGS: dict[str, dict[str, Any]] = {"segnet": {"width": 0.25}}


def make_batch(
    size: tuple[int, int],
    batch_size: int,
    tasks: tuple[str, ...],
    num_classes: int,
    seed: int,
    device: torch.device,
    data_args: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """``batch_size`` synthetic training images and their labels, stacked (image + the tasks);
    ``data_args``: the dataset's own knobs, as ``--data-arg`` gives them to ``train``."""
    knobs = dict(data_args or {})
    dataset = data_registry.create(
        DATASET, "train", n=batch_size, size=size, seed=seed, num_classes=num_classes, **knobs
    )
    samples = [dataset[i] for i in range(batch_size)]
    return {k: torch.stack([s[k] for s in samples]).to(device) for k in ("image", *tasks)}


def check_data_args(data_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The benchmark dataset's knobs (``--data-arg``, e.g. ``tasks=seg,depth,normal,edge,saliency``),
    checked as ``train`` checks them: an unknown or standard key is a one-line ConfigError."""
    if not data_args:
        return {}
    return data_knobs(TrainConfig(dataset=DATASET, data_args=dict(data_args)))


def dataset_tasks(data_args: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The tasks of the benchmark's dataset with knobs ``data_args``, in its order (the default ``tasks``)."""
    return tuple(data_registry.create(DATASET, "train", n=1, **check_data_args(data_args)).tasks)


def bench_optimizer(model: MultiTaskModel, method: BalancingMethod | None) -> torch.optim.Optimizer:
    """The optimizer training would use: Adam over every parameter, or, for a method that steps
    the shared parameters itself (MAO), plain SGD on them and AdamW on the rest."""
    if method is not None and method.requirements.optimizer == "sgd":
        return build_optimizer(TrainConfig(lr=1e-4), model, method)[0]
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    extra = method.parameters() if method is not None else []
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    return torch.optim.Adam(groups, lr=1e-4)


def make_precision(amp: str | None, device: torch.device) -> Precision | None:
    """The ``--amp`` mode each row trains under (a fresh scaler per row), None for float32;
    a bad value or fp16 off CUDA is a one-line ConfigError."""
    if amp in (None, "off"):
        return None
    return Precision(str(amp), device)


def make_engine(
    model: MultiTaskModel,
    method: BalancingMethod,
    tasks: tuple[str, ...],
    mode: str | None,
    recompute_every: int,
    precision: Precision | None = None,
    comm: Comm | None = None,
) -> Engine:
    """The engine training gives ``method`` (``precision``: under ``--amp``; ``comm``: one rank of several),
    with the tasks built once, as a run's."""
    task_set = as_task_set(tasks)
    return Engine(model, method, task_set, mode=mode, recompute_every=recompute_every, comm=comm, precision=precision)


def check_settings(
    size: Any,
    batch_size: int,
    tasks: Sequence[str] | None,
    recompute_every: int,
    grad_mode: str | None,
    warmup: int,
    repeats: int,
    data_args: Mapping[str, Any] | None = None,
) -> tuple[tuple[int, int], tuple[str, ...]]:
    """The image size and the tasks, once every setting has been checked (a one-line ConfigError)."""
    hw = parse_size(size)
    known = dataset_tasks(data_args)
    task_tuple = known if tasks is None else tuple(tasks)
    unknown = [t for t in task_tuple if t not in known]
    if unknown or not task_tuple or len(set(task_tuple)) != len(task_tuple):
        hint = (
            "" if not unknown or data_args else " (more with --data-arg tasks=..., e.g. seg,depth,normal,edge,saliency)"
        )
        raise ConfigError(f"--tasks {','.join(task_tuple)!r}: give distinct tasks among {', '.join(known)}{hint}")
    for flag, value, low in (("--batch-size", batch_size, 1), ("--repeats", repeats, 1), ("--warmup", warmup, 0)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")
    if not isinstance(recompute_every, int) or recompute_every < 1:
        raise ConfigError(f"--recompute-every must be an integer >= 1, got {recompute_every!r}")
    if grad_mode is not None and canonical_mode(grad_mode) not in MODES:
        raise ConfigError(f"--grad-mode {grad_mode!r} is not a mode; valid: {valid_modes()}")
    return hw, task_tuple


def method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"famo:update=next_batch"`` -> ``("famo", {"update": "next_batch"})``: a method name,
    then any number of ``:key=value`` knobs (values read as YAML scalars), so that two variants
    of one method can be timed side by side. An unknown name is a ConfigError listing the valid ones."""
    name, *items = str(spec).strip().split(":")
    name = name.strip().lower()
    factory = method_registry.METHODS.get(name)
    knobs = parse_kv(items, f"--methods {spec!r}:")
    valid = method_registry.METHODS.knobs(name)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    unknown = [k for k in knobs if k not in valid and not takes_any]
    if unknown:  # refused before any timing, not an error row among the results
        raise ConfigError(f"--methods {spec!r}: method {name!r} has no knob {unknown[0]!r}; valid: {', '.join(valid)}")
    return name, knobs


def method_names(methods: Sequence[str] | None) -> tuple[list[str], bool]:
    """Requested methods (validated, in order, without duplicates or plain EW) as specs
    (:func:`method_spec`), and whether they were explicit."""
    if methods is None:
        return [m for m in method_registry.available() if m != BASELINE], False
    names: list[str] = []
    for raw in methods:
        spec = str(raw).strip().lower()
        if not spec:
            continue
        method_spec(spec)
        if spec != BASELINE and spec not in names:
            names.append(spec)
    return names, True


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Where the numbers were taken: processor, core count, torch threads and versions."""
    dev = resolve_device(device)
    name = platform.processor() or platform.machine()
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    elif os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        name = models[0] if models else name
    return {
        "device": str(dev),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
