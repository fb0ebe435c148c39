"""Turning a config into the run's parts: device, datasets, model, method, optimizer."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from densemtl import data as data_registry
from densemtl import methods as method_registry
from densemtl import models as model_registry
from densemtl.balancing.base import BalancingMethod
from densemtl.data import MultiTaskDataset
from densemtl.data._sample_check import check_sample
from densemtl.data.base import TaskSubset
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.plugins import config_imports
from densemtl.registry import did_you_mean
from densemtl.tasks import TaskSet, as_task_set
from densemtl.training.checkpoint_meta import check_state_fields
from densemtl.training.config import TrainConfig, build_config
from densemtl.training.model_check import check_finite, meta_model
from densemtl.training.schedule import make_optimizer, make_scheduler


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
                f"--data-arg {key}: dataset {cfg.dataset!r} has no such knob{did_you_mean(key, own)}; "
                f"valid: {', '.join(own) or 'none'}"
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
    if cfg.tasks is not None and "tasks" not in cfg.data_args and "tasks" in data_registry.DATASETS.knobs(cfg.dataset):
        common["tasks"] = ",".join(cfg.tasks)  # a dataset that makes targets on request makes these
    train = data_registry.create(cfg.dataset, "train", augment=cfg.augment, n=cfg.n_train, **common)
    val = data_registry.create(cfg.dataset, "val", augment=False, n=cfg.n_val, **common)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"dataset {cfg.dataset!r} has an empty train or val split")
    if cfg.tasks is not None:
        missing = [t for t in cfg.tasks if t not in train.tasks]
        if missing:
            raise ConfigError(
                f"--tasks {','.join(cfg.tasks)}: dataset {cfg.dataset!r} has no task {', '.join(missing)}; "
                f"it has {', '.join(train.tasks)}"
            )
        train, val = TaskSubset(train, cfg.tasks), TaskSubset(val, cfg.tasks)
    _check_classes(train, cfg.dataset)
    for split, ds in (("train", train), ("val", val)):  # a 2-D image, a missing key: one line, not a traceback
        check_sample(ds, cfg.dataset, split)
    return train, val


def _check_classes(ds: MultiTaskDataset, name: str) -> None:
    """A ConfigError unless the dataset's ``num_classes`` is a whole number, >= 1 when it has ``seg``."""
    classes = getattr(ds, "num_classes", None)
    try:
        n = operator.index(classes) if not isinstance(classes, bool) else -1
    except TypeError:
        n = -1
    if n < 0 or (n == 0 and "seg" in ds.tasks):
        raise ConfigError(f"dataset {name!r} says it has num_classes={classes!r}; it must be a whole number >= 1")


#: A run's TaskSet, or task names (their defaults).
Tasks = TaskSet | Sequence[str]


def build_task_set(cfg: TrainConfig, tasks: Iterable[str], dataset: object = None) -> TaskSet:
    """The run's tasks, configured once: ``dataset``'s ``task_args`` (NYUD's edge tolerance; without
    a dataset, those of the class ``cfg.dataset``'s factory declares it returns) with
    ``cfg.task_args`` (``--task-arg``) over them; a bad task or knob is a one-line error."""
    defaults = getattr(dataset, "task_args", None) if dataset is not None else dataset_task_args(cfg.dataset)
    return TaskSet(tasks, cfg.task_args, defaults=defaults)


def dataset_task_args(name: str) -> Mapping[str, Mapping[str, Any]] | None:
    """The ``task_args`` of the class dataset ``name``'s factory returns, as its return annotation
    declares (None when it declares none, or the dataset is not registered in this process)."""
    import typing

    key = data_registry.DATASETS.find(name)
    if key is None:
        return None
    factory = data_registry.DATASETS.get(key)
    try:
        made = factory if isinstance(factory, type) else typing.get_type_hints(factory).get("return")
    except Exception:  # noqa: BLE001 - a plugin's annotation that does not resolve: no defaults
        return None
    return getattr(made, "task_args", None)


def create_model(arch: str, arch_args: dict[str, Any], tasks: Tasks, num_classes: int) -> MultiTaskModel:
    """Architecture ``arch`` with knobs ``arch_args`` for ``tasks`` (the run's TaskSet; names: their
    defaults); a bad knob is a one-line error, checked against the factory's signature before the
    call (:func:`densemtl.registry.check_call`)."""
    return model_registry.create(arch, as_task_set(tasks).channels(num_classes), **arch_args)


def check_fits_model(model: MultiTaskModel, arch: str, size: tuple[int, int] | None, flag: str = "--size") -> None:
    """A ConfigError unless images of ``size`` (H, W) fit ``model`` (its ``min_input_side``)."""
    if size is None:
        return
    need = model.min_input_side()
    if min(size) < need:
        hint = getattr(model, "min_input_hint", None)
        why = (
            f"({hint}); use a larger {flag}"
            if isinstance(hint, str)
            else (f"(one 2x2 pooling per stage); use a larger {flag} or fewer stages (--arch-arg depth_stages=N)")
        )
        raise ConfigError(
            f"{flag} {size[0]}x{size[1]} does not fit architecture {arch!r}: both sides must be at least "
            f"{need} pixels {why}"
        )


def probe_model(arch: str, arch_args: dict[str, Any], tasks: Tasks, num_classes: int) -> nn.Module | None:
    """``arch`` built on the meta device (shapes only); knobs whose model would not fit in memory
    are refused in one line (:mod:`~densemtl.training.model_check`)."""
    return meta_model(lambda knobs: create_model(arch, knobs, tasks, num_classes), arch, arch_args)


def build_model(cfg: TrainConfig, tasks: Tasks, num_classes: int) -> MultiTaskModel:
    """The config's model, initialised from its seed; a ``cfg.size`` it cannot take, or knobs
    whose model would not fit in memory, are refused."""
    probe = probe_model(cfg.arch, cfg.arch_args, tasks, num_classes)
    if isinstance(probe, MultiTaskModel):
        check_fits_model(probe, cfg.arch, cfg.size)  # before a parameter is allocated
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, cfg.arch_args, tasks, num_classes)
    check_fits_model(model, cfg.arch, cfg.size)
    if not any(p.requires_grad for p in model.parameters()):  # nothing to train: one line, not autograd's
        from densemtl.plugin_contracts import maker

        raise ConfigError(f"{maker(model) or f'architecture {cfg.arch!r}'} has no trainable parameters; "
                          "a model to train needs at least one")  # fmt: skip
    return model


def model_from_state(state: Mapping[str, Any], where: str | Path) -> tuple[MultiTaskModel, TrainConfig]:
    """The main network of checkpoint ``state`` (read from ``where``) and its config, its weights
    loaded; a checkpoint without its config, tasks or class count, or whose weights do not fit the
    architecture its config names, is a one-line ConfigError."""
    for key in ("config", "tasks", "num_classes", "model"):
        if key not in state:
            raise ConfigError(f"checkpoint {where} has no {key!r}; it is not a checkpoint of a densemtl run")
    given = state.get("objects")
    if isinstance(given, Mapping) and "model" in given:
        raise ConfigError(
            f"checkpoint {where}: its run trained a model given as a Python object ({given['model']}); "
            "build that model yourself and load the checkpoint's 'model' weights into it"
        )
    tasks, classes = state["tasks"], state["num_classes"]
    check_state_fields(state, where)
    try:
        cfg = build_config(state["config"])
    except ConfigError as e:
        raise ConfigError(f"checkpoint {where} holds a bad config: {e}") from None
    config_imports(cfg.imports, f"checkpoint {where}")  # what registered its architecture (if allowed)
    # the checkpoint's weights replace any pretrained ones: do not look for those again
    knobs = {**cfg.arch_args, **({"pretrained": False} if cfg.arch_args.get("pretrained") else {})}
    weights = state["model"]
    try:
        task_set = build_task_set(cfg, tasks)  # the heads' channels: the run's knobs (--task-arg)
        probe = probe_model(cfg.arch, knobs, task_set, classes)
    except ConfigError as e:
        raise ConfigError(f"checkpoint {where}: {e}") from None
    if probe is not None:  # shapes first: knobs the weights do not have are refused unbuilt
        _check_weights(probe.state_dict(), weights, cfg, tasks, where)
    try:
        model = create_model(cfg.arch, knobs, task_set, classes)
    except ConfigError as e:
        raise ConfigError(f"checkpoint {where}: {e}") from None
    _check_weights(model.state_dict(), weights, cfg, tasks, where)
    model.load_state_dict(weights)
    check_finite(model, where)
    return model, cfg


def _check_weights(
    expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], cfg: TrainConfig, tasks: Any, where: Any
) -> None:
    """A ConfigError unless ``weights`` has exactly the names and shapes of ``expected``."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        first = (mismatched or missing or unexpected)[0]
        raise ConfigError(
            f"checkpoint {where} does not match architecture {cfg.arch!r} {cfg.arch_args} for tasks "
            f"{', '.join(tasks)}: {len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
            f"mismatched keys (first: {first!r})"
        )
    kinds = [k for k in expected if weights[k].is_floating_point() != expected[k].is_floating_point()]
    if kinds:  # load_state_dict would cast integers into float weights (or floats into counters) silently
        k = kinds[0]
        got, want = (str(t[k].dtype).removeprefix("torch.") for t in (weights, expected))
        raise ConfigError(
            f"checkpoint {where}: tensor {k!r} holds {got} values where architecture {cfg.arch!r} has {want} "
            "ones; it is not this model's"
        )


#: A method's random generator is seeded with the run's seed plus this prime, so that its draws
#: (RLW's weights, PCGrad's orders, ...) are not those of the model's initialisation.
METHOD_SEED_OFFSET = 7919


def build_method(name: str, num_tasks: int, seed: int, knobs: Mapping[str, Any] | None = None) -> BalancingMethod:
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
    except ValueError as e:  # a built-in method's check of a knob's value (a plugin's: a PluginError)
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
        # torch's load_state_dict replaces each member's group dicts: point at the new ones, or an
        # LR scheduler on this group would set rates no member reads any more
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]


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
    """The optimizer and its per-epoch LR schedule (:mod:`densemtl.training.schedule`).

    By default Adam over the model (and the method's own learnable parameters); ``cfg.optimizer``
    chooses AdamW or SGD with momentum. A method whose ``requirements.optimizer`` is "sgd" (MAO)
    gets an ``OptimizerGroup``: plain SGD at the learning rate on the shared parameters, whose
    ``.grad`` already holds the method's step, and AdamW with the method's ``optimizer_options()``
    on the task-specific parameters (and the method's own).
    """
    if method.requirements.optimizer == "sgd":
        if cfg.optimizer != "adam":
            raise ConfigError(f"--optimizer {cfg.optimizer}: {cfg.method} chooses its own optimizers")
        opt: torch.optim.Optimizer = _split_optimizer(cfg, model, method)
    else:
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups += _method_groups(method, cfg.lr)
        opt = make_optimizer(cfg, groups)
    return opt, make_scheduler(cfg, opt)
