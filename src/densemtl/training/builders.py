"""Turning a config into the run's parts: device, datasets, model, method, optimizer."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import Dataset

from densemtl import data as data_registry
from densemtl import methods as method_registry
from densemtl import models as model_registry
from densemtl.balancing.base import BalancingMethod
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import task_channels
from densemtl.training.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'auto' (CUDA when available); an unusable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    common: dict[str, Any] = {
        "root": cfg.data_root,
        "size": cfg.size,
        "seed": cfg.seed,
        "num_classes": cfg.num_classes,
    }
    train = data_registry.create(cfg.dataset, "train", augment=cfg.augment, n=cfg.n_train, **common)
    val = data_registry.create(cfg.dataset, "val", augment=False, n=cfg.n_val, **common)
    if len(train) == 0 or len(val) == 0:  # type: ignore[arg-type]
        raise ConfigError(f"dataset {cfg.dataset!r} has an empty train or val split")
    return train, val


def build_model(cfg: TrainConfig, tasks: tuple[str, ...], num_classes: int) -> MultiTaskModel:
    torch.manual_seed(cfg.seed)
    try:
        return model_registry.create(cfg.arch, task_channels(tasks, num_classes), **cfg.arch_args)
    except TypeError as e:
        raise ConfigError(f"--arch-arg for {cfg.arch!r}: {e}") from None


def build_method(cfg: TrainConfig, num_tasks: int) -> BalancingMethod:
    kwargs = dict(cfg.method_args)
    factory = method_registry.METHODS.get(cfg.method)
    if "num_tasks" in inspect.signature(factory).parameters and "num_tasks" not in kwargs:
        kwargs["num_tasks"] = num_tasks
    try:
        method = method_registry.create(cfg.method, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--method-arg for {cfg.method!r}: {e}") from None
    method.set_generator(torch.Generator().manual_seed(cfg.seed + 7919))
    return method


def build_optimizer(
    cfg: TrainConfig, model: MultiTaskModel, method: BalancingMethod
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam over the model (and the method's own learnable parameters), step LR schedule."""
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    extra = method.parameters()
    if extra:
        groups.append({"params": extra, "lr": getattr(method, "lr", cfg.lr), "weight_decay": 0.0})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = cfg.lr_step or max(1, (2 * cfg.epochs) // 3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.lr_gamma)
    return opt, sched
