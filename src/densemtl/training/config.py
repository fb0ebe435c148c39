"""The training configuration: one dataclass, loadable from YAML, overridable by flags.

Its defaults are the demo: synthetic scenes, a small SegNet, equal weighting, a few epochs,
so that ``densemtl train`` with no arguments learns visibly on a laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from densemtl.errors import ConfigError


@dataclass
class TrainConfig:
    """Everything a run needs; ``config.yaml`` in a run directory is this, resolved."""

    dataset: str = "synthetic"
    data_root: str | None = None
    size: tuple[int, int] | None = None
    n_train: int | None = None
    n_val: int | None = None
    num_classes: int | None = None
    augment: bool = False
    arch: str = "segnet"
    arch_args: dict[str, Any] = field(default_factory=dict)
    method: str = "ew"
    method_args: dict[str, Any] = field(default_factory=dict)
    grad_mode: str | None = None
    recompute_every: int = 1
    peer_arch: str | None = None
    peer_args: dict[str, Any] = field(default_factory=dict)
    mimicry_weight: float = 1.0
    mimicry_temperature: float = 1.0
    alpha_warmup_epochs: int = 0
    epochs: int = 15
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_step: int | None = None
    lr_gamma: float = 0.5
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    diagnostics_every: int = 10
    tensorboard: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["size"] is not None:
            d["size"] = list(d["size"])
        return d


DEMO_OVERRIDES: dict[str, Any] = {
    "size": (64, 80),
    "n_train": 320,
    "n_val": 96,
    "arch_args": {"width": 0.25, "depth_stages": 4},
}


def parse_size(value: Any, name: str = "--size") -> tuple[int, int]:
    """'HxW', 'H,W', [H, W] or an int -> (H, W); positive, at least 16 each."""
    try:
        if isinstance(value, str):
            parts = value.lower().replace(",", "x").split("x")
            h, w = (int(p) for p in parts)
        elif isinstance(value, int):
            h = w = value
        else:
            h, w = (int(v) for v in value)
    except (ValueError, TypeError):
        raise ConfigError(f"{name} {value!r} is not a size; write it as HxW, e.g. 96x128") from None
    if h < 16 or w < 16:
        raise ConfigError(f"{name} {value!r} is too small; both sides must be at least 16 pixels")
    return h, w


def parse_value(text: str) -> Any:
    """A knob value from the command line: YAML scalar semantics ('3' -> 3, 'true' -> True)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_kv(items: list[str] | None, flag: str) -> dict[str, Any]:
    """['k=v', ...] -> {k: parsed v}; a malformed item is a one-line error naming the flag."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} must be key=value")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def _coerce(name: str, value: Any) -> Any:
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {name!r} cannot be empty")
    if name == "size":
        return parse_size(value, "size")
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
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {name!r} must be a number, got {value!r}")
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
        return value
    return value


def build_config(values: dict[str, Any]) -> TrainConfig:
    """Validate keys and types of a flat mapping and build the config (unknown key: error)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid: {', '.join(sorted(names))}")
        kwargs[k] = _coerce(k, value)
    cfg = TrainConfig(**kwargs)
    check_ranges(cfg)
    return cfg


def check_ranges(cfg: TrainConfig) -> None:
    """Values that parse but make no sense (negative epochs, zero batch, ...)."""
    if cfg.epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    for name in ("n_train", "n_val"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if cfg.lr_step is not None and cfg.lr_step < 1:
        raise ConfigError(f"lr_step must be >= 1, got {cfg.lr_step}")
    if cfg.recompute_every < 1:
        raise ConfigError(f"recompute_every must be >= 1, got {cfg.recompute_every}")
    if cfg.mimicry_weight < 0 or not cfg.mimicry_temperature > 0:
        raise ConfigError(
            f"mimicry_weight must be >= 0 and mimicry_temperature > 0, got {cfg.mimicry_weight}, "
            f"{cfg.mimicry_temperature}"
        )
    if cfg.alpha_warmup_epochs < 0:
        raise ConfigError(f"alpha_warmup_epochs must be >= 0, got {cfg.alpha_warmup_epochs}")
    if cfg.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {cfg.workers}")
    if cfg.diagnostics_every < 0:
        raise ConfigError(f"diagnostics_every must be >= 0 (0 = off), got {cfg.diagnostics_every}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a flat mapping; missing or malformed file: one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data


def save_yaml(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
