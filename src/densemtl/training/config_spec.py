"""The run spec: what each :class:`~densemtl.training.config.TrainConfig` field is, declared once.

Every field of the config is declared with :func:`spec`, which puts a :class:`Spec` in the
dataclass field's ``metadata``: its section (``data``, ``model``, ``method``, ``scheme``,
``optim``, ``schedule``, ``run``), help, choices (a tuple, or a :class:`RegistryRef` whose names
are read when ``--help`` is shown, so a plugin's entries appear like built-ins), range check,
whether it may change on ``--resume``, whether it changes a run's numbers, its flag, and what
``densemtl bench`` does with it. The rest is derived from the fields, never written twice:

- ``densemtl train``'s and ``densemtl bench``'s flags (:mod:`densemtl.cli.spec_flags`), grouped by
  section in ``--help``;
- the YAML key set and the values' types (:func:`~densemtl.training.config.build_config`);
- the range checks (:func:`check_value`, run by ``config_checks.check_ranges``);
- the resume rules (:func:`resumable_keys`, :func:`replanned_keys`);
- bench's single-task baseline key (:func:`baseline_settings`).

Why plain dataclasses with field metadata, and not pydantic or jsonargparse: the config stays
the flat dataclass every module reads (``cfg.lr``), old runs' flat ``config.yaml`` files load
unchanged, construction keeps its exact one-line errors (docs/errors.md), and the project gains
no dependency; what a schema library would add (nested models, its own CLI) is what the flat,
bit-stable config must not change. A field added with :func:`spec` reaches every derived place.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class _Unset:
    """A preset-dependent key the caller left out; :class:`TrainConfig` fills it on construction."""

    def __repr__(self) -> str:
        return "<unset>"


#: The default of a key the preset fills (``size``, ``n_train``, ...): keyed always by bench.
UNSET: Any = _Unset()

#: The sections of the spec, in ``--help`` order, with their titles.
SECTIONS: dict[str, str] = {
    "data": "data",
    "model": "architecture",
    "method": "balancing method",
    "scheme": "training scheme (how the members of a run learn together)",
    "optim": "optimizer",
    "schedule": "epochs and learning-rate schedule",
    "run": "run",
}

#: What bench does with a key: a shared setting (a bench flag too), set per cell (refused as a
#: shared setting), or a grid-file key only (no bench flag).
BENCH_ROLES = ("shared", "cell", "file")

#: A range check: a short rule (``">=1"``, ``">0 finite"``, ``">=0 <1"``), or a callable that
#: returns what the value must be (``"must be in 0..9"``) when it is out of range, else None.
Check = str | Callable[[Any], str | None] | None


@dataclass(frozen=True)
class RegistryRef:
    """A registry named by module and attribute, imported only when its names are asked for
    (``--help``, ``densemtl list``): a plugin's entries are listed like built-ins."""

    module: str
    attr: str

    def registry(self) -> Any:
        """The registry itself (imports its module)."""
        return getattr(importlib.import_module(self.module), self.attr)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return list(self.registry().available())


@dataclass(frozen=True)
class Spec:
    """What one config field is; see :func:`spec`."""

    section: str
    help: str
    check: Check = None
    note: str = ""
    choices: tuple[str, ...] | RegistryRef | None = None
    resumable: bool | str = False
    result: bool = True
    keyed: str | Callable[[Mapping[str, Any]], bool] = "changed"
    flag: str | None = ""
    metavar: str | None = None
    parse: Callable[[Any, str], Any] | None = None
    bench: str = "shared"
    bench_help: str | None = None
    scheme: str | None = None


def spec(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    section: str,
    help: str,  # noqa: A002 -- argparse's word
    check: Check = None,
    note: str = "",
    choices: tuple[str, ...] | RegistryRef | None = None,
    resumable: bool | str = False,
    result: bool = True,
    keyed: str | Callable[[Mapping[str, Any]], bool] = "changed",
    flag: str | None = "",
    metavar: str | None = None,
    parse: Callable[[Any, str], Any] | None = None,
    bench: str = "shared",
    bench_help: str | None = None,
    scheme: str | None = None,
) -> Any:
    """A config field declared once: its ``default`` (or ``factory`` for a mutable one) and
    what the derived places need.

    ``section``: one of :data:`SECTIONS`. ``help``: the flag's help (the default and choices are
    added to it). ``check``: the range check (:data:`Check`; ``note`` is added to its message in
    parentheses); None values pass. ``choices``: the values allowed (a tuple: checked and shown;
    a :class:`RegistryRef`: shown only, the registry refuses an unknown name when the run is
    built). ``resumable``: True when ``--resume`` may change it, ``"replan"`` when only with
    ``--replan-schedule``. ``result``: whether it changes a run's numbers, and so enters bench's
    baseline key; ``keyed``: ``"always"`` (in every key), ``"changed"`` (only when it differs
    from the default, so keys of benches that never set it stay what they were), or a predicate
    on the config mapping. ``flag``: the command-line flag ("" for ``--`` + the key with dashes;
    None: none). ``parse``: how a flag's or the YAML's value is read, given ``(value, name)``.
    ``bench``: one of :data:`BENCH_ROLES`; ``bench_help`` its flag's help there. ``scheme``: the
    training scheme whose knob it is (``--scheme-arg``).
    """
    if section not in SECTIONS:
        raise ValueError(f"config spec: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
    if bench not in BENCH_ROLES:
        raise ValueError(f"config spec: unknown bench role {bench!r}; valid: {', '.join(BENCH_ROLES)}")
    if isinstance(check, str):
        _rules(check)  # a typo in a rule fails when the field is declared
    meta = {
        "spec": Spec(
            section,
            help,
            check,
            note,
            choices,
            resumable,
            result,
            keyed,
            flag,
            metavar,
            parse,
            bench,
            bench_help,
            scheme,
        )
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls: type) -> list[tuple[dataclasses.Field, Spec]]:
    """The config class's fields with their specs, in declaration order."""
    return [(f, f.metadata["spec"]) for f in dataclasses.fields(cls) if "spec" in f.metadata]


def spec_of(cls: type, name: str) -> Spec:
    """The spec of field ``name`` of ``cls``."""
    return next(s for f, s in fields(cls) if f.name == name)


def default_of(f: dataclasses.Field) -> Any:
    """The field's default (a fresh one where it has a factory)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag_of(cls: type, name: str) -> str:
    """The command-line flag of key ``name`` (``--`` + the key with dashes unless declared)."""
    found = [s.flag for f, s in fields(cls) if f.name == name]
    return found[0] if found and found[0] else "--" + name.replace("_", "-")


def resumable_keys(cls: type) -> tuple[str, ...]:
    """The keys that may change when a run is resumed (they do not change its numbers), sorted."""
    return tuple(sorted(f.name for f, s in fields(cls) if s.resumable is True))


def replanned_keys(cls: type) -> tuple[str, ...]:
    """The keys that ``--replan-schedule`` may change when a run is resumed."""
    return tuple(f.name for f, s in fields(cls) if s.resumable == "replan")


def scheme_knobs(cls: type) -> dict[str, list[str]]:
    """Per training scheme, the config keys that are its knobs (in declaration order)."""
    out: dict[str, list[str]] = {}
    for f, s in fields(cls):
        if s.scheme:
            out.setdefault(s.scheme, []).append(f.name)
    return out


# -- range checks ------------------------------------------------------------------------------------
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda v, b: v >= b,
    ">": lambda v, b: v > b,
    "<=": lambda v, b: v <= b,
    "<": lambda v, b: v < b,
}


def _rules(rule: str) -> list[tuple[str, float]]:
    """``">=0 <1"`` -> [(">=", 0.0), ("<", 1.0)]; ``finite`` is ("finite", 0)."""
    out: list[tuple[str, float]] = []
    for word in rule.split():
        if word == "finite":
            out.append(("finite", 0.0))
            continue
        op = next((o for o in (">=", "<=", ">", "<") if word.startswith(o)), None)
        try:
            bound = float(word[len(op) :]) if op else math.nan
        except ValueError:
            op = None
        if op is None:
            raise ValueError(f"config spec: bad range rule {rule!r} (e.g. '>=1', '>0 finite', '>=0 <1')")
        out.append((op, bound))
    return out


def _phrase(rule: str) -> str:
    """What a value must be under ``rule``: ``"a finite number > 0"``, ``">= 0 and < 1"``."""
    parts = [f"{op} {bound:g}" for op, bound in _rules(rule) if op != "finite"]
    return ("a finite number " if "finite" in rule.split() else "") + " and ".join(parts)


def check_value(name: str, s: Spec, value: Any) -> str | None:
    """The one-line error of config key ``name`` holding ``value`` (None when it is in range)."""
    if value is None:
        return None
    shown = repr(value) if isinstance(value, str) else str(value)
    if isinstance(s.choices, tuple) and value not in s.choices:
        return f"{name} must be one of {', '.join(s.choices)}, got {shown}"
    if s.check is None:
        return None
    if callable(s.check):
        must = s.check(value)
    else:
        ok = all(
            math.isfinite(value) if op == "finite" else _COMPARE[op](value, bound) for op, bound in _rules(s.check)
        )
        must = None if ok else "must be " + _phrase(s.check)
    if must is None:
        return None
    note = f" ({s.note})" if s.note else ""
    return f"{name} {must}{note}, got {shown}"


# -- bench's baseline key ----------------------------------------------------------------------------
def baseline_settings(cls: type, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of the config mapping ``cfg`` that a single-task baseline depends on: every
    result-changing key that bench does not set per cell, the ``"always"`` keyed ones always and
    the others only when they differ from their default (or as their predicate says), so that
    the keys of benches that never set a newer key stay what they were."""
    out: dict[str, Any] = {}
    for f, s in fields(cls):
        if not s.result or s.bench == "cell":
            continue
        if s.keyed == "always" or (s.keyed == "changed" and f.default is UNSET):
            out[f.name] = cfg[f.name]
        elif callable(s.keyed):
            if s.keyed(cfg):
                out[f.name] = cfg[f.name]
        elif cfg.get(f.name) != _plain(default_of(f)):
            out[f.name] = cfg[f.name]
    return out


def _plain(value: Any) -> Any:
    """A default as ``TrainConfig.to_dict`` writes values (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value
