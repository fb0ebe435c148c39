"""What a bench runs: the grid of (arch, method, seed) cells, their configs, and the baselines.

A :class:`BenchGrid` is built from flags or a YAML file (same keys), validated up front (unknown
architecture or method, seeds < 1, a bad validation fraction: ``ConfigError``), and turns into
one :class:`~densemtl.training.config.TrainConfig` per cell and per single-task baseline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densemtl import methods as method_registry
from densemtl import models as model_registry
from densemtl.errors import ConfigError
from densemtl.training import config
from densemtl.training.config import build_config, load_yaml, merge_layers, preset_values
from densemtl.training.config_spec import baseline_settings
from densemtl.training.config_spec import fields as spec_fields


def cell_keys() -> tuple[str, ...]:
    """Training keys that a bench sets per cell itself (the spec's ``bench="cell"`` keys); a user
    may not give them as shared settings."""
    return tuple(f.name for f, s in spec_fields(config.TrainConfig) if s.bench == "cell")


#: The cell keys of the built-in config.
CELL_KEYS = cell_keys()
#: The architecture name that is itself the single-task baseline (no baseline of its own).
SINGLE = "single"
#: Seed of the data (synthetic scenes) and of the carved validation split, the same for every cell.
DATA_SEED = 0


@dataclass(frozen=True)
class Job:
    """One training run of a bench: a cell or a baseline, with where it goes."""

    kind: str  # "cell" or "baseline"
    arch: str  # the architecture of the grid (for a baseline: the backbone it stands for)
    method: str  # the balancing method ("single-task" for a baseline)
    seed: int
    out: str
    config: dict[str, Any]
    val_fraction: float

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.method}-s{self.seed}"


@dataclass
class BenchGrid:
    """The validated bench: the cells' shared training settings and the axes of the grid."""

    archs: list[str]
    methods: list[str]
    seeds: int
    base: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    arch_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    val_fraction: float = 0.2
    jobs: int = 1
    out: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every name known, every number in range, the shared settings a valid train config."""
        if not self.archs:
            raise ConfigError("bench: --archs names no architecture")
        if not self.methods:
            raise ConfigError("bench: --methods names no method")
        for arch in self.archs:
            model_registry.MODELS.get(arch)  # unknown -> ConfigError listing the valid ones
        for method in self.methods:
            method_registry.METHODS.get(method)
        for method in self.method_args:
            if method not in self.methods:
                raise ConfigError(f"bench: method_args given for {method!r}, which is not in --methods")
        for arch in self.arch_args:
            if arch not in self.archs:
                raise ConfigError(f"bench: arch_args given for {arch!r}, which is not in --archs")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"bench: --seeds must be an integer >= 1, got {self.seeds!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"bench: --jobs must be an integer >= 1, got {self.jobs!r}")
        if not isinstance(self.val_fraction, int | float) or not 0.0 < float(self.val_fraction) < 1.0:
            raise ConfigError(f"bench: --val-fraction must lie strictly between 0 and 1, got {self.val_fraction!r}")
        self.val_fraction = float(self.val_fraction)
        for key in cell_keys():
            if key in self.base:
                raise ConfigError(f"bench: {key!r} is set per cell by the bench and cannot be a shared setting")
        build_config(self.base)  # unknown key or bad value -> ConfigError

    # -- configs ----------------------------------------------------------------------------------
    def knobs(self, arch: str) -> dict[str, Any]:
        """The knobs of ``arch``: the shared ``arch_args`` with that architecture's own over them."""
        return {**(self.base.get("arch_args") or {}), **self.arch_args.get(arch, {})}

    def cell_config(self, arch: str, method: str, seed: int) -> dict[str, Any]:
        """The flat train config of one cell."""
        cfg = {**self.base, "arch": arch, "arch_args": self.knobs(arch), "method": method, "seed": seed}
        if method in self.method_args:
            cfg["method_args"] = dict(self.method_args[method])
        return build_config(cfg).to_dict()

    def baseline_config(self, arch: str, seed: int) -> dict[str, Any]:
        """The single-task baseline standing for ``arch``: one ``arch`` network per task, EW."""
        cfg = {
            **self.base,
            "arch": SINGLE,
            "arch_args": {"base": arch, "base_args": self.knobs(arch)},
            "method": "ew",
            "seed": seed,
        }
        return build_config(cfg).to_dict()

    def baseline_key(self, arch: str) -> str:
        """A hash of the data and training settings that the baseline standing for ``arch`` depends
        on: every result-changing key of the spec that is not set per cell
        (:func:`~densemtl.training.config_spec.baseline_settings`)."""
        cfg = build_config({**self.base, "arch_args": self.knobs(arch)}).to_dict()
        settings = baseline_settings(config.TrainConfig, cfg)
        settings["base"] = arch
        if settings["data_root"]:
            settings["data_root"] = str(Path(settings["data_root"]).expanduser().resolve())
        settings["val_fraction"] = self.val_fraction
        settings["data_seed"] = DATA_SEED
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def baseline_archs(self) -> list[str]:
        """The architectures that get a single-task baseline (all but ``single`` itself)."""
        return [a for a in self.archs if a != SINGLE]

    def jobs_list(self, out: Path, cache: Path) -> list[Job]:
        """Baselines first (they are shared), then every cell, seeds outermost."""
        jobs: list[Job] = []
        for seed in range(self.seeds):
            for arch in self.baseline_archs():
                cfg = self.baseline_config(arch, seed)
                run = cache / "baselines" / self.baseline_key(arch) / f"{arch}-s{seed}"
                jobs.append(Job("baseline", arch, "single-task", seed, str(run), cfg, self.val_fraction))
        for seed in range(self.seeds):
            for arch in self.archs:
                for method in self.methods:
                    cfg = self.cell_config(arch, method, seed)
                    run = out / "runs" / f"{arch}-{method}-s{seed}"
                    jobs.append(Job("cell", arch, method, seed, str(run), cfg, self.val_fraction))
        return jobs

    def to_dict(self) -> dict[str, Any]:
        """The grid as plain YAML-able data (what ``bench.yaml`` holds); ``out`` and ``jobs`` left out."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("out", "jobs")}
        return json.loads(json.dumps(d))


def cache_dir() -> Path:
    """``$DENSEMTL_CACHE`` or ``~/.cache/densemtl``."""
    env = os.environ.get("DENSEMTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "densemtl"


def split_names(value: Any, key: str) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (lower-cased, blanks and repeats dropped)."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        raise ConfigError(f"bench: {key} must be a comma-separated list, got {value!r}")
    names = [s.strip().lower() for s in items if s.strip()]
    return list(dict.fromkeys(names))  # a name given twice is one column of the grid, not two


def resolve_grid(overrides: dict[str, Any] | None = None, *, yaml: str | Path | None = None) -> BenchGrid:
    """The grid of a YAML grid file with ``overrides`` over it (knob mappings merged key by key),
    as :func:`~densemtl.training.config.resolve_config` does for one run."""
    return grid_from_values(merge_layers(load_yaml(yaml) if yaml is not None else {}, overrides))


def grid_from_values(values: dict[str, Any]) -> BenchGrid:
    """Build a grid from one flat mapping (YAML keys, or flags turned into keys).

    On the synthetic data the demo preset fills what is left unset, as it does for ``train``, and
    all of it is written into ``bench.yaml``: the shared data sizes, and each architecture's demo
    knobs (SegNet ×0.25 with 4 stages; an architecture the preset has no knobs for keeps its own
    defaults) unless ``arch_args`` gives knobs, shared or for that architecture.
    """
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    base = dict(values)
    try:
        archs = split_names(base.pop("archs", "segnet"), "archs")
        methods = split_names(base.pop("methods", "ew"), "methods")
    except AttributeError:
        raise ConfigError("bench: archs and methods must be lists of names") from None
    base.update({k: v for k, v in preset_values(base).items() if k != "arch_args"})
    arch_args = base.pop("arch_args", None) or {}
    if not isinstance(arch_args, dict):
        raise ConfigError(f"bench: arch_args must be a mapping of knobs, got {arch_args!r}")
    if any(not isinstance(arch_args[k], dict) for k in arch_args if str(k).lower() in archs):
        raise ConfigError("bench: arch_args of one architecture must be a mapping of knobs")
    per_arch = {str(k).lower(): dict(v) for k, v in arch_args.items() if str(k).lower() in archs}
    shared = {k: v for k, v in arch_args.items() if str(k).lower() not in archs}
    if shared:
        base["arch_args"] = shared
    else:
        for arch in archs:  # the demo's size of each architecture, unless told otherwise
            demo = preset_values({**base, "arch": arch}).get("arch_args")
            if demo and arch not in per_arch:
                per_arch[arch] = dict(demo)
    method_args = base.pop("method_args", None) or {}
    if not isinstance(method_args, dict) or not all(isinstance(v, dict) for v in method_args.values()):
        raise ConfigError("bench: method_args must map a method name to its knobs, e.g. {cagrad: {alpha: 0.4}}")
    seeds = base.pop("seeds", 1)
    val_fraction = base.pop("val_fraction", 0.2)
    jobs = base.pop("jobs", 1)
    out = base.pop("out", None)
    return BenchGrid(
        archs=archs,
        methods=methods,
        seeds=seeds,
        base=base,
        method_args={str(k).lower(): dict(v) for k, v in method_args.items()},
        arch_args=per_arch,
        val_fraction=val_fraction,
        jobs=jobs,
        out=out,
    )
