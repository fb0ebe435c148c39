"""The checks of :class:`~densemtl.training.config.TrainConfig` (values that parse but make no sense, as the
spec declares them) and its training scheme (``scheme``, ``--scheme-arg`` knobs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from densemtl.data.base import MAX_SEED as MAX_SEED  # re-exported: the data writers check seeds too
from densemtl.errors import ConfigError
from densemtl.registry import did_you_mean
from densemtl.training.config_spec import RegistryRef, check_value, scheme_knobs
from densemtl.training.config_spec import fields as spec_fields

if TYPE_CHECKING:
    from densemtl.training.config import TrainConfig

#: The most classes a run may have: per-pixel logits of more would outgrow any memory (LVIS has 1203).
MAX_CLASSES = 65536


#: The values of ``--amp``.
AMP_MODES = ("off", "bf16", "fp16")


#: The registries whose names some keys take (read when ``--help`` is shown).
DATASET_NAMES = RegistryRef("densemtl.data", "DATASETS")
ARCH_NAMES = RegistryRef("densemtl.models", "MODELS")
METHOD_NAMES = RegistryRef("densemtl.balancing", "METHODS")
SCHEME_NAMES = RegistryRef("densemtl.training.schemes", "SCHEMES")
TASK_NAMES = RegistryRef("densemtl.tasks", "TASKS")


def seed_range(v: int) -> str | None:
    """The seed's range check (:data:`MAX_SEED`)."""
    return None if 0 <= v <= MAX_SEED else f"must be in 0..{MAX_SEED} (2**32 - 1)"


def classes_range(v: int) -> str | None:
    """``num_classes``' range check (below 1: the dataset says what it has)."""
    return None if v <= MAX_CLASSES else f"must be at most {MAX_CLASSES}"


def sgd(cfg: Mapping[str, Any]) -> bool:
    """Bench keys ``momentum`` with sgd only (the other optimizers ignore it)."""
    return bool(cfg.get("optimizer") == "sgd")


def own_schedule_epochs(cfg: Mapping[str, Any]) -> bool:
    """Bench keys ``schedule_epochs`` only when it is not ``epochs``."""
    return cfg.get("schedule_epochs") not in (None, cfg.get("epochs"))


def canonical_names(cfg: TrainConfig) -> None:
    """``cfg.method`` as registered when it is another spelling of a registered name (LibMTL's
    ``Nash_MTL`` is ``nashmtl``), so that config.yaml holds the canonical name; an unknown name is
    left for the registry to refuse when the run is built (a plugin may register it)."""
    from densemtl.balancing import METHODS

    cfg.method = METHODS.find(cfg.method) or cfg.method


def check_ranges(cfg: TrainConfig) -> None:
    """Values that parse but make no sense (negative epochs, zero batch, ...): each field's range
    check and choices as its spec declares them (:func:`~densemtl.training.config_spec.check_value`)."""
    for f, s in spec_fields(type(cfg)):
        error = check_value(f.name, s, getattr(cfg, f.name))
        if error:
            raise ConfigError(error)


def expand_scheme_args(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the ``scheme_args`` that are config keys of their scheme moved onto those keys
    (``--scheme-arg peer_arch=segnet`` is ``--peer-arch segnet``); a plugin scheme's own knobs stay.
    A knob the scheme does not have, or one given both ways with two values: one line."""
    args = values.get("scheme_args")
    if not isinstance(args, Mapping) or not args:
        return values
    declared = scheme_knobs(cls)
    name = values.get("scheme")
    if name is None:  # the scheme whose knobs they are
        owners = {s for s, knobs in declared.items() for k in args if str(k).replace("-", "_") in knobs}
        name = owners.pop() if len(owners) == 1 else None
    knobs = declared.get(str(name).lower(), []) if name is not None else []
    if name is None or (not knobs and str(name).lower() in declared):
        known = sorted({k for ks in declared.values() for k in ks})
        key = str(next(iter(args)))
        where = f"scheme {name!r} has no knob" if name is not None else "no scheme has a knob"
        raise ConfigError(f"{where} {key!r}{did_you_mean(key, known)}; valid: {', '.join(known) or 'none'}")
    out, rest = dict(values), {}
    for key, value in args.items():
        k = str(key).replace("-", "_")
        if k in knobs:
            if k in values and values[k] != value:
                raise ConfigError(f"scheme knob {k!r} given twice, as {values[k]!r} and --scheme-arg {k}={value!r}")
            out[k] = value
        elif knobs:
            raise ConfigError(f"scheme {name!r} has no knob {k!r}{did_you_mean(k, knobs)}; valid: {', '.join(knobs)}")
        else:
            rest[k] = value  # a plugin scheme's own knob: its factory checks it
    out["scheme_args"] = rest
    return out


def resolve_scheme(cfg: TrainConfig) -> None:
    """``cfg.scheme`` named: ``mutual`` when a peer architecture is given, else ``single``; a
    scheme's knob set under another scheme is a one-line error (an unknown scheme is left for the
    registry to refuse when the run is built: a plugin may register it)."""
    if cfg.scheme is None:
        cfg.scheme = "mutual" if cfg.peer_arch else "single"
    cfg.scheme = cfg.scheme.lower()
    if cfg.scheme != "mutual" and cfg.peer_arch:
        SCHEME_NAMES.registry().canonical(cfg.scheme)  # a misspelt scheme: one line with did-you-mean
        raise ConfigError(f"--peer-arch is a knob of scheme 'mutual', not of scheme {cfg.scheme!r}; leave it out")
    if cfg.scheme == "mutual" and not cfg.peer_arch:
        raise ConfigError("scheme 'mutual' needs a peer network: --scheme-arg peer_arch=ARCH (or --peer-arch ARCH)")
