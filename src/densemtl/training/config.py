"""The training configuration: one dataclass, resolved once (preset -> YAML -> overrides), validated.

``TrainConfig()`` is the demo, exactly what ``densemtl train`` with no flags runs: synthetic
scenes at 64x80, 320 train / 96 val images, a SegNet at width 0.25 with 4 stages, equal
weighting, so that it learns visibly on a laptop CPU in minutes. The demo's sizes are the
*preset*: they fill only keys left unset, only on the synthetic data (``--dataset nyuv2`` keeps
the dataset's own size and all its samples), and the SegNet knobs only for ``arch: segnet``.
Every construction (``TrainConfig(...)``, :func:`build_config`, :func:`resolve_config`,
``dataclasses.replace``) coerces the types and checks the ranges: a bad value is a
:class:`~densemtl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from densemtl.errors import ConfigError
from densemtl.registry import did_you_mean
from densemtl.training.config_checks import AMP_MODES as AMP_MODES  # re-exported
from densemtl.training.config_checks import ARCH_NAMES as ARCH_NAMES  # re-exported
from densemtl.training.config_checks import DATASET_NAMES as DATASET_NAMES  # re-exported
from densemtl.training.config_checks import MAX_SEED as MAX_SEED  # re-exported
from densemtl.training.config_checks import METHOD_NAMES as METHOD_NAMES  # re-exported
from densemtl.training.config_checks import SCHEME_NAMES as SCHEME_NAMES  # re-exported
from densemtl.training.config_checks import TASK_NAMES as TASK_NAMES  # re-exported
from densemtl.training.config_checks import (
    canonical_names,
    check_ranges,
    classes_range,
    expand_scheme_args,
    own_schedule_epochs,
    resolve_scheme,
    seed_range,
    sgd,
)
from densemtl.training.config_parse import MAX_SIDE as MAX_SIDE  # re-exported
from densemtl.training.config_parse import coerce
from densemtl.training.config_parse import parse_imports as parse_imports  # re-exported
from densemtl.training.config_parse import parse_kv as parse_kv  # re-exported
from densemtl.training.config_parse import parse_size as parse_size  # re-exported
from densemtl.training.config_parse import parse_task_args as parse_task_args  # re-exported
from densemtl.training.config_parse import parse_tasks as parse_tasks  # re-exported
from densemtl.training.config_parse import parse_value as parse_value  # re-exported
from densemtl.training.config_spec import UNSET as UNSET  # re-exported
from densemtl.training.config_spec import fields as spec_fields
from densemtl.training.config_spec import replanned_keys, resumable_keys, spec
from densemtl.training.schedule import LR_SCHEDULES, OPTIMIZERS, default_lr_step
from densemtl.training.yaml_io import read_yaml_file

_ALWAYS = "always"  # bench keys it in every baseline key (the keys of 0.3)
_MDML = "mutual"


@dataclass
class TrainConfig:
    """Everything a run needs; ``config.yaml`` in a run directory is this, resolved. Each field is
    declared once with :func:`~densemtl.training.config_spec.spec` (flags, checks, resume rules
    and bench's key are derived from it)."""

    # fmt: off
    dataset: str = spec("synthetic", section="data", help="the dataset", choices=DATASET_NAMES, keyed=_ALWAYS)
    data_root: str | None = spec(
        None, section="data", keyed=_ALWAYS,
        help="root of a dataset in the MTAN layout ROOT/{train,val}/{image,label,depth,normal}",
    )
    size: tuple[int, int] | None = spec(
        UNSET, section="data", metavar="HxW", parse=parse_size, keyed=_ALWAYS,
        help="HxW to train at (default: the dataset's own)",
    )
    n_train: int | None = spec(
        UNSET, section="data", check=">=1", keyed=_ALWAYS,
        help="number of training samples (synthetic size, or a subset)",
    )
    n_val: int | None = spec(UNSET, section="data", check=">=1", keyed=_ALWAYS, help="number of validation samples")
    num_classes: int | None = spec(
        None, section="data", check=classes_range, keyed=_ALWAYS,
        help="classes of the segmentation (cityscapes: 7 (default) or 19)",
    )
    augment: bool = spec(False, section="data", keyed=_ALWAYS, help="MTAN random scale-crop and flip")
    data_args: dict[str, Any] = spec(
        factory=dict, section="data", flag="--data-arg",
        help="a dataset knob (repeatable)",
    )
    tasks: list[str] | None = spec(
        None, section="data", parse=parse_tasks, choices=TASK_NAMES,
        help="comma-separated tasks to train, a subset of the dataset's (default: all of them)",
    )
    task_args: dict[str, dict[str, Any]] = spec(
        factory=dict, section="data", flag="--task-arg", parse=parse_task_args,
        help="a task knob as TASK:KEY=VALUE, e.g. edge:pos_weight=0.95 (repeatable)",
    )
    arch: str = spec("segnet", section="model", bench="cell", choices=ARCH_NAMES, help="the architecture")
    arch_args: dict[str, Any] = spec(
        UNSET, section="model", flag="--arch-arg", keyed=_ALWAYS,
        help="an architecture knob (repeatable)",
        bench_help="a knob of every architecture (repeatable)",
    )
    method: str = spec("ew", section="method", bench="cell", choices=METHOD_NAMES, help="the balancing method")
    method_args: dict[str, Any] = spec(
        factory=dict, section="method", flag="--method-arg", bench="file",
        help="a method knob (repeatable)",
    )
    grad_mode: str | None = spec(
        None, section="method",
        help="how per-task gradients are taken, named as the method's gradient sources: representation, "
        "gramian or parameters (the Jacobian; 'jacobian' is an alias) (default: the method's choice)",
    )
    recompute_every: int = spec(
        1, section="method", check=">=1",
        help="reuse a Gramian method's task weights for k steps",
    )
    peer_arch: str | None = spec(
        None, section="scheme", bench="cell", scheme=_MDML,
        help="MDML: train a peer network of this architecture by mutual learning (--scheme mutual)",
    )
    peer_args: dict[str, Any] = spec(
        factory=dict, section="scheme", flag="--peer-arg", bench="cell", scheme=_MDML,
        help="MDML: a peer architecture knob, over those it inherits from --arch-arg (all of them for the same "
             "architecture, those it takes for another)",
    )
    mimicry_weight: float = spec(
        1.0, section="scheme", check=">=0 finite", bench="file", scheme=_MDML,
        help="MDML: weight alpha of the mimicry losses",
    )
    mimicry_temperature: float = spec(
        1.0, section="scheme", check=">0 finite", bench="file", scheme=_MDML,
        help="MDML: softmax temperature of the segmentation KL",
    )
    alpha_warmup_epochs: int = spec(
        0, section="scheme", check=">=0", bench="file", scheme=_MDML,
        help="MDML: ramp alpha linearly from 0 over N epochs",
    )
    scheme: str | None = spec(
        None, section="scheme", bench="cell", choices=SCHEME_NAMES,
        help="how the members of a run learn together (default: mutual with --peer-arch, else single)",
    )
    scheme_args: dict[str, Any] = spec(
        factory=dict, section="scheme", flag="--scheme-arg", bench="cell",
        help="a knob of the training scheme (repeatable): --scheme-arg peer_arch=segnet is --peer-arch segnet",
    )
    epochs: int = spec(
        15, section="schedule", check=">=0", resumable=True, keyed=_ALWAYS,
        help="epochs to train; a --resume may extend them",
    )
    batch_size: int = spec(16, section="optim", check=">=1", keyed=_ALWAYS, help="images per step")
    lr: float = spec(2e-3, section="optim", check=">0 finite", keyed=_ALWAYS, help="learning rate")
    weight_decay: float = spec(0.0, section="optim", check=">=0 finite", keyed=_ALWAYS, help="weight decay")
    lr_step: int | None = spec(
        UNSET, section="schedule", check=">=1", resumable="replan", keyed=_ALWAYS,
        help="step schedule: multiply the learning rate by --lr-gamma every N epochs (default: 2/3 of --epochs, so "
             "it halves once; the synthetic demo preset: 10 of its 15); config.yaml holds the value",
    )
    lr_gamma: float = spec(
        0.5, section="schedule", check=">0 finite", note="the factor on the learning rate", keyed=_ALWAYS,
        help="step schedule: the factor of each decay",
    )
    lr_schedule: str = spec(
        "step", section="schedule", choices=LR_SCHEDULES,
        help="learning-rate schedule, taken per epoch: step (x--lr-gamma every --lr-step epochs), cosine (towards 0 "
             "over --epochs), poly (DeepLab's (1 - epoch/epochs)^0.9) or none (constant)",
    )
    schedule_epochs: int = spec(
        UNSET, section="schedule", check=">=0", resumable="replan", keyed=own_schedule_epochs, flag=None,
        help="the epochs cosine and poly are planned for (default: epochs)",
    )
    warmup_epochs: int = spec(
        0, section="schedule", check=">=0",
        help="ramp the learning rate up linearly over the first N epochs",
    )
    optimizer: str = spec(
        "adam", section="optim", choices=OPTIMIZERS,
        help="adam, adamw (decoupled weight decay) or sgd",
    )
    momentum: float = spec(0.9, section="optim", check=">=0 <1", keyed=sgd, help="sgd's momentum")
    seed: int = spec(
        0, section="run", check=seed_range, bench="cell",
        help="seed of the initialisation and the data order",
    )
    device: str = spec("cpu", section="run", resumable=True, result=False, help="cpu, cuda, cuda:N or auto")
    workers: int = spec(0, section="run", check=">=0", resumable=True, result=False, help="data loader processes")
    diagnostics_every: int = spec(
        10, section="run", check=">=0", note="0 = off", resumable=True, result=False,
        help="sample task-gradient cosines and per-block balance every K steps (0 = off)",
    )
    tensorboard: bool = spec(
        False, section="run", resumable=True, result=False, bench="file",
        help="also write RUN/tensorboard/ event files",
    )
    checkpoint_every: int = spec(
        0, section="run", check=">=0", note="0 = off", resumable=True, result=False, metavar="N",
        help="also write checkpoints/last.pt every N steps within an epoch (0 = off)",
    )
    skip_nonfinite: int = spec(
        0, section="run", check=">=0", note="0 = off", resumable=True, result=False, metavar="N",
        help="skip up to N steps with a NaN or inf loss or update (counted in metrics.jsonl) instead of stopping the "
             "run",
    )
    sync_bn: bool | None = spec(
        None, section="run", bench="file",
        help="under torchrun: batch-norm statistics over the global batch (default: on with several processes)",
    )
    amp: str = spec(
        "off", section="run", choices=AMP_MODES,
        help="mixed precision: autocast the forward pass to bf16 or fp16 (fp16 with a gradient scaler); every "
             "method's aggregation stays float32",
    )
    imports: list[str] = spec(
        factory=list, section="run", flag=None, parse=parse_imports, resumable=True, result=False,
        help="plugin modules imported before anything is built (--import)",
    )
    # fmt: on

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not UNSET}
        filled = preset_values(given, "demo")
        for name, bare in UNFILLED.items():
            if getattr(self, name) is UNSET:
                setattr(self, name, copy.deepcopy(filled.get(name, bare)))
        epochs = _coerce(type(self), "epochs", self.epochs)
        if self.lr_step is UNSET or self.lr_step == AUTO:
            self.lr_step = default_lr_step(epochs)
        if self.schedule_epochs is UNSET or self.schedule_epochs == AUTO:
            self.schedule_epochs = epochs
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(type(self), f.name, getattr(self, f.name)))
        resolve_scheme(self)
        canonical_names(self)
        check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["size"] is not None:
            d["size"] = list(d["size"])
        return d


#: What a preset-dependent key is when no preset fills it: the dataset's own size, all its
#: samples, the architecture's default knobs.
UNFILLED: dict[str, Any] = {"size": None, "n_train": None, "n_val": None, "arch_args": {}, "lr_step": "auto"}
#: A schedule key's "work it out": ``lr_step`` 2/3 of ``epochs``, ``schedule_epochs`` = ``epochs``.
AUTO = "auto"
#: The demo's data sizes (synthetic scenes only) and knobs per architecture.
DEMO: dict[str, Any] = {"size": (64, 80), "n_train": 320, "n_val": 96, "lr_step": 10}
DEMO_ARCH_ARGS: dict[str, dict[str, Any]] = {"segnet": {"width": 0.25, "depth_stages": 4}}


def demo_preset(values: Mapping[str, Any]) -> dict[str, Any]:
    """The demo's values for a config whose given keys are ``values`` (before filtering)."""
    if values.get("dataset", "synthetic") != "synthetic":
        return {}
    out = dict(DEMO)
    arch = values.get("arch", "segnet")
    if arch in DEMO_ARCH_ARGS:
        out["arch_args"] = DEMO_ARCH_ARGS[arch]
    return copy.deepcopy(out)


PRESETS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {"demo": demo_preset}


def preset_values(values: Mapping[str, Any], preset: str = "demo") -> dict[str, Any]:
    """The keys preset ``preset`` fills in a config whose given keys are ``values`` (unset ones only)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown config preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
    return {k: v for k, v in PRESETS[preset](values).items() if k not in values}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """``value`` of key ``name`` as its declared type (``parse`` where the spec has one)."""
    parse = next((s.parse for f, s in spec_fields(cls) if f.name == name), None)
    return coerce(name, value, _hints(cls)[name], parse)


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """The config of a flat mapping (dashes in keys read as underscores; an unknown key is an error);
    keys left out take the defaults, the demo preset's where it applies."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in expand_scheme_args(TrainConfig, dict(values)).items():
        k = str(key).replace("-", "_")
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(k, names)}; valid: {', '.join(sorted(names))}")
        kwargs[k] = value
    return TrainConfig(**kwargs)


def merge_layers(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers over earlier ones, dashes in keys read as underscores; where two layers both
    hold a mapping under one key (``arch_args``, ``method_args``, ...), it merges key by key (and
    ``task_args`` task by task, knob by knob)."""
    out: dict[str, Any] = {}
    for layer in layers:  # --scheme-arg peer_arch=X is peer_arch: X within its layer
        for key, value in expand_scheme_args(TrainConfig, dict(layer or {})).items():
            k = str(key).replace("-", "_")
            if isinstance(value, Mapping) and isinstance(out.get(k), Mapping):
                old = out[k]
                value = {
                    n: {**old[n], **v} if isinstance(v, Mapping) and isinstance(old.get(n), Mapping) else v
                    for n, v in {**old, **value}.items()
                } if k == "task_args" else {**old, **value}  # fmt: skip
            out[k] = value
    return out


def resolve_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    yaml: str | Path | None = None,
    preset: str | None = "demo",
) -> TrainConfig:
    """The config of a run: ``preset`` (None: none), then the ``yaml`` file's keys, then
    ``overrides`` (knob mappings merged key by key), validated. With no arguments: the demo,
    ``TrainConfig()``; ``densemtl train`` is this with its flags as ``overrides``."""
    values = merge_layers(load_yaml(yaml) if yaml is not None else {}, overrides)
    filled = preset_values(values, preset) if preset is not None else {}
    bare = {k: copy.deepcopy(v) for k, v in UNFILLED.items() if k not in values}
    return build_config({**bare, **filled, **values})


#: Keys that may change when a run is resumed (they do not change its numbers): the spec's.
RESUMABLE = resumable_keys(TrainConfig)
#: Keys that ``--replan-schedule`` may change when a run is resumed.
REPLANNED = replanned_keys(TrainConfig)


def resume_config(
    out: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    yaml: str | Path | None = None,
    replan: bool = False,
) -> TrainConfig:
    """The config of the run in ``out``, with the YAML file's and the overrides' values over it;
    only the :data:`RESUMABLE` keys may differ from the run's. The learning-rate schedule is kept
    as planned unless ``replan``: then it is planned for the new ``epochs``
    (:func:`~densemtl.training.schedule.replanned`; ``lr_step`` may be given)."""
    from densemtl.training.schedule import replanned

    out = Path(out)
    path = out / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml)")
    base = build_config(load_yaml(path))
    layer = load_yaml(yaml) if yaml is not None else {}
    held = base.to_dict()
    if held["scheme"] == ("mutual" if base.peer_arch else "single"):  # the run's scheme as its peer_arch says
        del held["scheme"]  # (so that a changed peer_arch is refused as that)
    given = build_config(merge_layers(held, layer, overrides))
    if replan:  # lr_step as given, else as a fresh run of the new epochs has it (the demo preset's 10)
        step_given = any("lr_step" in merge_layers(v) for v in (layer, overrides or {}))
        fresh = preset_values({k: v for k, v in given.to_dict().items() if k != "lr_step"}).get("lr_step")
        given = replanned(base, given, given.lr_step if step_given else fresh)
    resumable, replannable = resumable_keys(TrainConfig), replanned_keys(TrainConfig)
    may_change = resumable + (replannable if replan else ())
    for f in dataclasses.fields(TrainConfig):
        if f.name not in may_change and getattr(given, f.name) != getattr(base, f.name):
            hint = "; --replan-schedule re-plans the schedule" if f.name in replannable else ""
            raise ConfigError(
                f"cannot change {f.name!r} when resuming {out}; only {', '.join(resumable)} may change{hint}"
            )
    return given


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a flat mapping; missing or malformed file: one-line error."""
    return read_yaml_file(path, text_keys(TrainConfig))


@functools.cache
def text_keys(cls: type | None = None) -> frozenset[str]:
    """The string-typed config keys (``amp``, ``arch``, ``method``, ...): in YAML their values keep
    their own spelling where YAML 1.1 would read a boolean (``amp: off``)."""
    return frozenset(k for k, hint in _hints(cls or TrainConfig).items() if hint in (str, str | None))


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
