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
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from densemtl.errors import ConfigError
from densemtl.registry import did_you_mean
from densemtl.training.config_checks import AMP_MODES as AMP_MODES  # re-exported
from densemtl.training.config_checks import MAX_SEED as MAX_SEED  # re-exported
from densemtl.training.config_checks import canonical_names, check_ranges
from densemtl.training.config_parse import MAX_SIDE as MAX_SIDE  # re-exported
from densemtl.training.config_parse import parse_imports as parse_imports  # re-exported
from densemtl.training.config_parse import parse_kv as parse_kv  # re-exported
from densemtl.training.config_parse import parse_size as parse_size  # re-exported
from densemtl.training.config_parse import parse_task_args as parse_task_args  # re-exported
from densemtl.training.config_parse import parse_tasks as parse_tasks  # re-exported
from densemtl.training.config_parse import parse_value as parse_value  # re-exported
from densemtl.training.schedule import default_lr_step
from densemtl.training.yaml_io import parse_yaml


class _Unset:
    """A preset-dependent key the caller left out; :class:`TrainConfig` fills it on construction."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass
class TrainConfig:
    """Everything a run needs; ``config.yaml`` in a run directory is this, resolved."""

    dataset: str = "synthetic"
    data_root: str | None = None
    size: tuple[int, int] | None = UNSET
    n_train: int | None = UNSET
    n_val: int | None = UNSET
    num_classes: int | None = None
    augment: bool = False
    data_args: dict[str, Any] = field(default_factory=dict)  # the dataset factory's own knobs
    tasks: list[str] | None = None  # the tasks to train, a subset of the dataset's (None: all of them)
    task_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task, its knobs (over the dataset's)
    arch: str = "segnet"
    arch_args: dict[str, Any] = UNSET
    method: str = "ew"
    method_args: dict[str, Any] = field(default_factory=dict)
    grad_mode: str | None = None
    recompute_every: int = 1
    peer_arch: str | None = None
    peer_args: dict[str, Any] = field(default_factory=dict)  # over the arch_args the peer inherits
    mimicry_weight: float = 1.0
    mimicry_temperature: float = 1.0
    alpha_warmup_epochs: int = 0
    epochs: int = 15
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_step: int | None = UNSET  # epochs between decays (default: 2/3 of epochs; null: never, runs before 0.4)
    lr_gamma: float = 0.5
    lr_schedule: str = "step"  # step, cosine, poly or none (training/schedule.py)
    schedule_epochs: int = UNSET  # the epochs cosine and poly are planned for (default: epochs)
    warmup_epochs: int = 0  # linear warm-up of the learning rate over the first N epochs
    optimizer: str = "adam"  # adam, adamw or sgd
    momentum: float = 0.9  # sgd's momentum
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    diagnostics_every: int = 10
    tensorboard: bool = False
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: epoch ends only)
    skip_nonfinite: int = 0  # steps with a NaN/inf loss or update that may be skipped
    sync_bn: bool | None = None  # batch statistics over the global batch (None: on with several processes)
    amp: str = "off"  # mixed precision of the forward pass: off, bf16 or fp16
    imports: list[str] = field(default_factory=list)  # plugin modules imported before anything is built

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not UNSET}
        filled = preset_values(given, "demo")
        for name, bare in UNFILLED.items():
            if getattr(self, name) is UNSET:
                setattr(self, name, copy.deepcopy(filled.get(name, bare)))
        epochs = _coerce("epochs", self.epochs)
        if self.lr_step is UNSET or self.lr_step == AUTO:
            self.lr_step = default_lr_step(epochs)
        if self.schedule_epochs is UNSET or self.schedule_epochs == AUTO:
            self.schedule_epochs = epochs
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name)))
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
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any) -> Any:
    hint = _hints()[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {name!r} cannot be empty")
    if name == "size":
        return parse_size(value, "size")
    if name == "tasks":
        return parse_tasks(value)
    if name == "imports":
        return parse_imports(value)
    if name == "task_args":
        return parse_task_args(value)
    base = (
        next((a for a in args if a is not type(None)), hint) if optional or isinstance(hint, types.UnionType) else hint
    )
    origin = typing.get_origin(base) or base
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {name!r} must be a mapping of knobs, got {value!r}")
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {name!r} must be true or false, got {value!r}")
    if origin is int:
        value = _numeric_string(value, int)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if origin is float:
        value = _numeric_string(value, float)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
        return value
    return value


def _numeric_string(value: Any, kind: type) -> Any:
    """``value`` as a number of ``kind`` when it is a string that spells one (PyYAML reads an
    unquoted ``1e-3`` as a string: YAML 1.1 wants ``1.0e-3``); anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    if kind is int:
        try:
            return int(value.strip())
        except ValueError:
            return int(number) if number.is_integer() else value
    return number


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """The config of a flat mapping (dashes in keys read as underscores; an unknown key is an error);
    keys left out take the defaults, the demo preset's where it applies."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
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
    for layer in layers:
        for key, value in (layer or {}).items():
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


#: Keys that may change when a run is resumed (they do not change its numbers).
RESUMABLE = (
    "checkpoint_every",
    "device",
    "diagnostics_every",
    "epochs",
    "imports",
    "skip_nonfinite",
    "tensorboard",
    "workers",
)


#: Keys that ``--replan-schedule`` may change when a run is resumed.
REPLANNED = ("lr_step", "schedule_epochs")


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
    given = build_config(merge_layers(base.to_dict(), layer, overrides))
    if replan:  # lr_step as given, else as a fresh run of the new epochs has it (the demo preset's 10)
        step_given = any("lr_step" in merge_layers(v) for v in (layer, overrides or {}))
        fresh = preset_values({k: v for k, v in given.to_dict().items() if k != "lr_step"}).get("lr_step")
        given = replanned(base, given, given.lr_step if step_given else fresh)
    may_change = RESUMABLE + (REPLANNED if replan else ())
    for f in dataclasses.fields(TrainConfig):
        if f.name not in may_change and getattr(given, f.name) != getattr(base, f.name):
            hint = "; --replan-schedule re-plans the schedule" if f.name in REPLANNED else ""
            raise ConfigError(
                f"cannot change {f.name!r} when resuming {out}; only {', '.join(RESUMABLE)} may change{hint}"
            )
    return given


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a flat mapping; missing or malformed file: one-line error."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; pass a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file (not UTF-8); pass a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or e})") from None
    data = parse_yaml(text, f"config file {p}", text_keys())
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data


@functools.cache
def text_keys() -> frozenset[str]:
    """The string-typed config keys (``amp``, ``arch``, ``method``, ...): in YAML their values keep
    their own spelling where YAML 1.1 would read a boolean (``amp: off``)."""
    return frozenset(k for k, hint in _hints().items() if hint in (str, str | None))


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
