"""Turning a config into the run's parts: device, datasets, model, method, optimizer."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import Dataset

from densemtl import data as data_registry
from densemtl import methods as method_registry
from densemtl import models as model_registry
from densemtl.balancing.base import BalancingMethod, OptimizerMethod
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


class OptimizerGroup(torch.optim.Optimizer):
    """Several torch optimizers stepped as one (``step``, ``zero_grad``, ``state_dict``).

    Its ``param_groups`` are the very dicts of its members' groups, so one LR scheduler built on
    it sets the learning rate of every member.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("OptimizerGroup needs at least one optimizer")
        self.optimizers = dict(optimizers)
        super().__init__([g for opt in self.optimizers.values() for g in opt.param_groups], {})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("OptimizerGroup.step takes no closure")
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        states = state_dict.get("optimizers")
        if not isinstance(states, dict) or set(states) != set(self.optimizers):
            found = sorted(states) if isinstance(states, dict) else "a single optimizer"
            raise ConfigError(f"optimizer state holds {found}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(states[name])


def _split_optimizer(cfg: TrainConfig, model: MultiTaskModel, method: BalancingMethod) -> OptimizerGroup:
    """Plain SGD for the shared parameters (the method's update is the step), AdamW for the rest."""
    if cfg.grad_mode == "representation":
        raise ConfigError(
            f"--grad-mode representation: {cfg.method} keeps moments per shared parameter and steps "
            "them itself; it runs in parameters mode"
        )
    if cfg.weight_decay:
        raise ConfigError(
            f"--weight-decay: {cfg.method} applies its own decoupled weight decay; "
            "use --method-arg weight_decay=... instead"
        )
    options = method.optimizer_options() if isinstance(method, OptimizerMethod) else {}
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
    parts: dict[str, torch.optim.Optimizer] = {}
    if shared:
        wd = float(options.get("weight_decay", 0.0))
        parts["shared"] = torch.optim.SGD(shared, lr=cfg.lr, momentum=0.0, weight_decay=wd)
    groups: list[dict[str, Any]] = [{"params": rest}] if rest else []
    extra = method.parameters()
    if extra:
        groups.append({"params": extra, "lr": getattr(method, "lr", cfg.lr), "weight_decay": 0.0})
    if groups:
        parts["tasks"] = torch.optim.AdamW(groups, lr=cfg.lr, **options)
    return OptimizerGroup(parts)


def build_optimizer(
    cfg: TrainConfig, model: MultiTaskModel, method: BalancingMethod
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and its step LR schedule.

    By default Adam over the model (and the method's own learnable parameters). A method whose
    ``shared_optimizer`` is "sgd" (MAO) gets an ``OptimizerGroup``: plain SGD at the learning rate
    on the shared parameters, whose ``.grad`` already holds the method's step, and AdamW with the
    method's ``optimizer_options()`` on the task-specific parameters (and the method's own).
    """
    if method.shared_optimizer == "sgd":
        opt: torch.optim.Optimizer = _split_optimizer(cfg, model, method)
    elif method.shared_optimizer == "adam":
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        extra = method.parameters()
        if extra:
            groups.append({"params": extra, "lr": getattr(method, "lr", cfg.lr), "weight_decay": 0.0})
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"{type(method).__name__}.shared_optimizer must be 'adam' or 'sgd'")
    step = cfg.lr_step or max(1, (2 * cfg.epochs) // 3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.lr_gamma)
    return opt, sched
