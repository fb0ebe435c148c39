"""Turning a config into the run's parts: device, datasets, model, method, optimizer."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from densemtl import data as data_registry
from densemtl import methods as method_registry
from densemtl import models as model_registry
from densemtl.balancing.base import BalancingMethod
from densemtl.data import MultiTaskDataset
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


#: The keywords every dataset factory takes, set by their own config keys (not ``data_args``).
STANDARD_DATA_KEYS = ("split", "root", "size", "augment", "seed", "n", "num_classes")


def data_knobs(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg.data_args``, checked against the knobs the dataset's factory takes beyond the standard ones."""
    factory = data_registry.DATASETS.get(cfg.dataset)  # unknown dataset -> ConfigError
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    own = [k for k in data_registry.DATASETS.knobs(cfg.dataset) if k not in STANDARD_DATA_KEYS]
    for key in cfg.data_args:
        if key in STANDARD_DATA_KEYS:
            raise ConfigError(f"--data-arg {key}: set by its own config key, not as a dataset knob")
        if key not in own and not accepts_any:
            raise ConfigError(
                f"--data-arg {key}: dataset {cfg.dataset!r} has no such knob; valid: {', '.join(own) or 'none'}"
            )
    return dict(cfg.data_args)


def build_datasets(cfg: TrainConfig) -> tuple[MultiTaskDataset, MultiTaskDataset]:
    """The train and val splits of ``cfg.dataset``, with its ``data_args`` knobs."""
    common: dict[str, Any] = {
        "root": cfg.data_root,
        "size": cfg.size,
        "seed": cfg.seed,
        "num_classes": cfg.num_classes,
        **data_knobs(cfg),
    }
    train = data_registry.create(cfg.dataset, "train", augment=cfg.augment, n=cfg.n_train, **common)
    val = data_registry.create(cfg.dataset, "val", augment=False, n=cfg.n_val, **common)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"dataset {cfg.dataset!r} has an empty train or val split")
    return train, val


def create_model(arch: str, arch_args: dict[str, Any], tasks: tuple[str, ...], num_classes: int) -> MultiTaskModel:
    """Architecture ``arch`` with knobs ``arch_args`` for ``tasks`` (a bad knob is a one-line error)."""
    try:
        return model_registry.create(arch, task_channels(tasks, num_classes), **arch_args)
    except TypeError as e:
        raise ConfigError(f"--arch-arg for {arch!r}: {e}") from None


def build_model(cfg: TrainConfig, tasks: tuple[str, ...], num_classes: int) -> MultiTaskModel:
    """The config's model, initialised from its seed."""
    torch.manual_seed(cfg.seed)
    return create_model(cfg.arch, cfg.arch_args, tasks, num_classes)


#: A method's random generator is seeded with the run's seed plus this prime, so that its draws
#: (RLW's weights, PCGrad's orders, ...) are not those of the model's initialisation.
METHOD_SEED_OFFSET = 7919


def build_method(
    name: str, num_tasks: int, seed: int, knobs: Mapping[str, Any] | None = None
) -> BalancingMethod:
    """The registered method ``name`` with ``knobs`` (``num_tasks`` filled in where its factory
    takes it and it is not given), its generator seeded with ``seed + METHOD_SEED_OFFSET``.

    The one way a run (``Member``) and ``densemtl speed`` build a method. A knob the method
    refuses is a ConfigError naming ``--method-arg``.
    """
    kwargs = dict(knobs or {})
    factory = method_registry.METHODS.get(name)
    if "num_tasks" in inspect.signature(factory).parameters and "num_tasks" not in kwargs:
        kwargs["num_tasks"] = num_tasks
    try:
        method = method_registry.create(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--method-arg for {name!r}: {e}") from None
    method.set_generator(torch.Generator().manual_seed(seed + METHOD_SEED_OFFSET))
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


def _method_groups(method: BalancingMethod, lr: float) -> list[dict[str, Any]]:
    """The parameter group of the method's own learnable parameters (UW's log-variances), at the
    learning rate it asks for (``parameters_lr``) or the run's, without weight decay."""
    extra = method.parameters()
    if not extra:
        return []
    own_lr = method.parameters_lr()
    return [{"params": extra, "lr": lr if own_lr is None else own_lr, "weight_decay": 0.0}]


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
    options = method.optimizer_options()
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
    parts: dict[str, torch.optim.Optimizer] = {}
    if shared:
        wd = float(options.get("weight_decay", 0.0))
        parts["shared"] = torch.optim.SGD(shared, lr=cfg.lr, momentum=0.0, weight_decay=wd)
    groups: list[dict[str, Any]] = [{"params": rest}] if rest else []
    groups += _method_groups(method, cfg.lr)
    if groups:
        parts["tasks"] = torch.optim.AdamW(groups, lr=cfg.lr, **options)
    return OptimizerGroup(parts)


def build_optimizer(
    cfg: TrainConfig, model: MultiTaskModel, method: BalancingMethod
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and its step LR schedule.

    By default Adam over the model (and the method's own learnable parameters). A method whose
    ``requirements.optimizer`` is "sgd" (MAO) gets an ``OptimizerGroup``: plain SGD at the
    learning rate on the shared parameters, whose ``.grad`` already holds the method's step, and
    AdamW with the method's ``optimizer_options()`` on the task-specific parameters (and the
    method's own).
    """
    if method.requirements.optimizer == "sgd":
        opt: torch.optim.Optimizer = _split_optimizer(cfg, model, method)
    else:
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups += _method_groups(method, cfg.lr)
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = cfg.lr_step or max(1, (2 * cfg.epochs) // 3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=cfg.lr_gamma)
    return opt, sched
