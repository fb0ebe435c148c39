"""Objects a user hands the :class:`~densemtl.training.trainer.Trainer` instead of names.

``Trainer(cfg, out, model=..., train_data=..., val_data=..., method=..., optimizer=...)`` trains
one's own :class:`~densemtl.models.base.MultiTaskModel`, datasets, balancing method object and
optimizer with everything the CLI's runs have (run directory, exact resume, checkpoints, plots).
The config still gives what no object says: epochs, batch size, seed, device, workers, ...

- ``model``: a ``MultiTaskModel`` (its tasks must be the data's); the config's ``arch`` is ignored.
- ``train_data`` / ``val_data``: both or neither; each a
  :class:`~densemtl.data.base.MultiTaskDataset` (``tasks``, ``num_classes``, ``size``, ``len``,
  ``[i]``; ``set_epoch`` optional).
- ``method``: a registered name or a :class:`~densemtl.balancing.base.BalancingMethod` object
  (its state is the run's: it is checkpointed and restored).
- ``optimizer``: a ``torch.optim.Optimizer`` over the model's parameters, or a callable
  ``params -> Optimizer`` given the trainable parameters (and the method's own, e.g. UW's, as a
  second group). The method's own parameters are added to an optimizer instance that lacks them.
- ``scheduler``: an LR scheduler over that optimizer, or a callable ``optimizer -> scheduler``,
  stepped once per epoch. With one's own optimizer and no scheduler the learning rate is constant
  (the config's ``lr``/``lr_step`` describe the optimizer densemtl builds, not one's own).

Checkpoints of such a run record which objects it was given (``objects``), so that ``eval``,
``predict`` and ``load_run`` can say that a model given as an object must be rebuilt by its author.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from densemtl.balancing import METHODS, BalancingMethod
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.training.builders import METHOD_SEED_OFFSET
from densemtl.training.config import TrainConfig

OptimizerArg = torch.optim.Optimizer | Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
SchedulerArg = torch.optim.lr_scheduler.LRScheduler | Callable[[torch.optim.Optimizer], Any]


@dataclass
class Parts:
    """The objects given for the main network; None: built from the config as usual."""

    model: MultiTaskModel | None = None
    method: BalancingMethod | None = None
    optimizer: OptimizerArg | None = None
    scheduler: SchedulerArg | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


def qualname(obj: object) -> str:
    """``module.Class`` of ``obj``'s type, as recorded in a checkpoint's ``objects``."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_name(method: BalancingMethod) -> str | None:
    """The registry name whose factory is ``method``'s class, if one is."""
    return METHODS.name_of(type(method))


def check_dataset(data: object, flag: str) -> None:
    """``data`` has what the trainer reads of a dataset (one line naming ``flag`` otherwise)."""
    missing = [a for a in ("tasks", "num_classes", "size", "__len__", "__getitem__") if not hasattr(data, a)]
    if missing:
        raise ConfigError(
            f"Trainer({flag}=...): a {type(data).__name__} is not a multi-task dataset: it has no "
            f"{', '.join(missing)} (see densemtl.data.base.MultiTaskDataset)"
        )


def resolve_objects(
    cfg: TrainConfig,
    *,
    model: object = None,
    train_data: object = None,
    val_data: object = None,
    method: str | BalancingMethod | None = None,
    optimizer: object = None,
    scheduler: object = None,
) -> tuple[TrainConfig, Parts, dict[str, str]]:
    """Check the given objects and return the config (its ``method`` named after a method given by
    name or a registered class), the parts, and the record of the objects for the checkpoint."""
    record: dict[str, str] = {}
    if (train_data is None) != (val_data is None):
        given = "train_data" if train_data is not None else "val_data"
        raise ConfigError(f"Trainer({given}=...): give both train_data and val_data, or neither")
    for flag, data in (("train_data", train_data), ("val_data", val_data)):
        if data is not None:
            check_dataset(data, flag)
            record[flag] = qualname(data)
    if train_data is not None and tuple(train_data.tasks) != tuple(val_data.tasks):  # type: ignore[union-attr]
        raise ConfigError(
            f"Trainer: train_data has tasks {list(train_data.tasks)} but val_data has {list(val_data.tasks)}"  # type: ignore[union-attr]
        )
    if model is not None:
        if not isinstance(model, MultiTaskModel):
            kind = "an nn.Module" if isinstance(model, nn.Module) else f"a {type(model).__name__}"
            raise ConfigError(
                f"Trainer(model=...): {kind} is not a densemtl MultiTaskModel (encode/decode and tasks); "
                "subclass densemtl.models.MultiTaskModel, or balance your own module's losses with densemtl.backward"
            )
        record["model"] = qualname(model)
    parts = Parts(model=model)
    if isinstance(method, str):
        cfg = dataclasses.replace(cfg, method=method)
    elif method is not None:
        if not isinstance(method, BalancingMethod):
            raise ConfigError(
                f"Trainer(method=...): expected a method name or a BalancingMethod, got {type(method).__name__}"
            )
        parts.method = method
        if method.generator is None:  # as build_method seeds a registered method's
            method.set_generator(torch.Generator().manual_seed(cfg.seed + METHOD_SEED_OFFSET))
        record["method"] = qualname(method)
        name = registered_name(method)
        if name is not None:
            cfg = dataclasses.replace(cfg, method=name, method_args={})
    if optimizer is not None:
        if not (isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)):
            raise ConfigError(
                f"Trainer(optimizer=...): expected a torch optimizer or a callable params -> optimizer, "
                f"got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, torch.optim.Optimizer) and model is None:
            raise ConfigError("Trainer(optimizer=...): an optimizer instance needs the model it optimizes (model=...)")
        parts.optimizer = optimizer
        record["optimizer"] = qualname(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else "callable"
    if scheduler is not None:
        if optimizer is None:
            raise ConfigError("Trainer(scheduler=...): a scheduler is for one's own optimizer; give optimizer=... too")
        parts.scheduler = scheduler
        record["scheduler"] = qualname(scheduler) if not _is_factory(scheduler) else "callable"
    return cfg, parts, record


def _is_factory(obj: object) -> bool:
    return callable(obj) and not isinstance(obj, torch.optim.lr_scheduler.LRScheduler)


def own_optimizer(
    parts: Parts, model: MultiTaskModel, method: BalancingMethod, lr: float
) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and schedule of ``parts`` for ``model`` and ``method`` (see the module's text)."""
    if method.requirements.optimizer == "sgd":
        raise ConfigError(
            f"Trainer(optimizer=...): {type(method).__name__} steps the shared parameters itself and needs "
            "densemtl's own optimizer; leave optimizer out"
        )
    extra = list(method.parameters())
    given = parts.optimizer
    if isinstance(given, torch.optim.Optimizer):
        opt = given
        have = {id(p) for g in opt.param_groups for p in g["params"]}
        ours = [p for p in model.parameters() if p.requires_grad]
        if not any(id(p) in have for p in ours):
            raise ConfigError("Trainer(optimizer=...): the optimizer holds none of the model's parameters")
        missing = [p for p in extra if id(p) not in have]
        if missing:
            opt.add_param_group({"params": missing, "weight_decay": 0.0, "lr": method.parameters_lr() or lr})
    else:
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0, "lr": method.parameters_lr() or lr})
        opt = given(groups)  # type: ignore[misc]
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(f"Trainer(optimizer=...): the callable returned a {type(opt).__name__}, not an optimizer")
    sched = parts.scheduler
    if sched is None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    elif _is_factory(sched):
        sched = sched(opt)  # type: ignore[operator]
    for name in ("step", "state_dict", "load_state_dict"):
        if not hasattr(sched, name):
            raise ConfigError(f"Trainer(scheduler=...): a {type(sched).__name__} has no {name}(); give an LR scheduler")
    return opt, sched


def is_config_model(model: MultiTaskModel, cfg: TrainConfig, num_classes: int) -> bool:
    """Whether ``model`` is the config's architecture (same class, same parameter names and shapes),
    so that ``eval``, ``predict`` and ``load_run`` can rebuild it from the run's config."""
    from densemtl.training.builders import build_task_set, create_model

    knobs = {**cfg.arch_args, **({"pretrained": False} if "pretrained" in cfg.arch_args else {})}
    try:
        with torch.device("meta"):
            twin = create_model(cfg.arch, knobs, build_task_set(cfg, model.tasks), num_classes)
    except Exception:  # an architecture that cannot be built on the meta device, or bad knobs
        return False
    ours, theirs = model.state_dict(), twin.state_dict()
    return (
        type(twin) is type(model) and list(ours) == list(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    )


def check_parts(
    parts: Parts, record: dict[str, str], cfg: TrainConfig, tasks: tuple[str, ...], num_classes: int, members: int
) -> None:
    """The given model predicts the data's tasks (it is recorded as an object unless it is the
    config's own architecture), and objects are for a run of one network (mutual learning builds
    every member from the config)."""
    if parts.model is not None and tuple(parts.model.tasks) != tuple(tasks):
        predicts = list(parts.model.tasks)
        raise ConfigError(f"Trainer(model=...): the model predicts {predicts} but the data has {list(tasks)}")
    if parts.model is not None and is_config_model(parts.model, cfg, num_classes):
        del record["model"]
    if members > 1 and not parts.empty:
        raise ConfigError(
            f"Trainer: {', '.join(k for k in record if k not in ('train_data', 'val_data'))} given as objects, "
            f"but this run trains {members} networks (--peer-arch); give them by name in the config"
        )
