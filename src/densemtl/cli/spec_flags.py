"""The flags of ``densemtl train`` and ``densemtl bench``, derived from the run spec.

Each :class:`~densemtl.training.config.TrainConfig` field with a flag becomes one argument, in an
argument group per section of the spec (:data:`~densemtl.training.config_spec.SECTIONS`). Its
help is the spec's, with the default and the choices added; where the choices are a registry's
(datasets, architectures, methods, schemes, tasks) they and the registry's knobs are read only
when ``--help`` is shown (:class:`LazyText`), so a plugin's entries are listed like built-ins.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any

from densemtl.training import config
from densemtl.training.config_parse import parse_kv
from densemtl.training.config_spec import SECTIONS, RegistryRef, Spec, default_of, flag_of, scheme_knobs
from densemtl.training.config_spec import fields as spec_fields


class LazyText(str):
    """Help text worked out when ``--help`` is shown (``render``), not when the parser is built."""

    render: Callable[[], str]

    def __new__(cls, render: Callable[[], str], placeholder: str = "...") -> LazyText:
        text = super().__new__(cls, placeholder)  # not empty: argparse shows only a help that is
        text.render = render
        return text


class SpecHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, rendering :class:`LazyText` helps and section descriptions (one
    paragraph per line of the rendered text)."""

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.help, LazyText):
            action = copy.copy(action)
            action.help = action.help.render().replace("%", "%%")
        return super()._expand_help(action)

    def _format_text(self, text: str) -> str:
        if not isinstance(text, LazyText):
            return super()._format_text(text)
        width = max(self._width - self._current_indent, 11)
        indent = " " * self._current_indent
        lines = [
            textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "    ")
            for line in text.render().splitlines()
        ]
        return "\n".join(lines) + "\n\n"


def _names(ref: RegistryRef) -> str:
    try:
        return ", ".join(ref.names())
    except Exception as e:  # noqa: BLE001 -- help must show even when a registry cannot load
        return f"(cannot list: {e})"


def _help(name: str, s: Spec, default: Any, bench: bool) -> str | LazyText:
    """The help of the flag of config key ``name``: the spec's, the choices, the default."""
    text = (s.bench_help if bench and s.bench_help else s.help).replace("%", "%%")
    shown = default if not isinstance(default, bool | dict | list) else None
    if shown is not None and shown is not config.UNSET and "default" not in text:
        text += f" (default: {shown})"
    if isinstance(s.choices, RegistryRef):
        ref = s.choices
        return LazyText(lambda: f"{text.replace('%%', '%')}; registered: {_names(ref)} (densemtl list)")
    return text


def _kwargs(name: str, s: Spec, hint: Any, default: Any, bench: bool) -> dict[str, Any]:
    """argparse's keywords for the flag of config key ``name`` (dest: the key itself)."""
    kw: dict[str, Any] = {"dest": name, "help": _help(name, s, default, bench)}
    kind, optional = _kind(hint)
    if kind is dict:
        kw.update(action="append", metavar="TASK:KEY=VALUE" if name == "task_args" else "KEY=VALUE")
    elif kind is bool:
        kw["action"] = argparse.BooleanOptionalAction if optional else "store_true"
    elif kind in (int, float) and s.parse is None:
        kw["type"] = kind
    if isinstance(s.choices, tuple):
        kw["choices"] = list(s.choices)
    if s.metavar:
        kw["metavar"] = s.metavar
    return kw


def _kind(hint: Any) -> tuple[Any, bool]:
    """The type a hint is (``dict`` for ``dict[str, Any]``, ``int`` for ``int | None``) and
    whether None is allowed."""
    args = typing.get_args(hint)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(a for a in args if a is not type(None)) if union else hint
    return typing.get_origin(base) or base, union and type(None) in args


def flag_fields(bench: bool = False) -> list[tuple[str, str, Spec]]:
    """(key, flag, spec) of every config key with a flag (``bench``: those bench offers)."""
    out = []
    for f, s in spec_fields(config.TrainConfig):
        if s.flag is None or (bench and s.bench != "shared"):
            continue
        out.append((f.name, flag_of(config.TrainConfig, f.name), s))
    return out


def add_spec_flags(p: argparse.ArgumentParser, bench: bool = False) -> None:
    """The flags of the config keys on parser ``p``, one argument group per section."""
    hints = typing.get_type_hints(config.TrainConfig)
    defaults = {f.name: default_of(f) for f, _ in spec_fields(config.TrainConfig)}
    flags = flag_fields(bench)
    for section, title in SECTIONS.items():
        mine = [(name, flag, s) for name, flag, s in flags if s.section == section]
        if mine:
            group = p.add_argument_group(title, _section_text(section))
        for name, flag, s in mine:
            group.add_argument(flag, **_kwargs(name, s, hints[name], defaults[name], bench))


def given_values(args: argparse.Namespace, bench: bool = False) -> dict[str, Any]:
    """The config values of the spec's flags given on the command line (argparse leaves the others
    unset: ``SUPPRESS`` defaults), each read as its spec says (KEY=VALUE flags as mappings)."""
    values: dict[str, Any] = {}
    for name, flag, s in flag_fields(bench):
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        if s.parse is not None:
            value = s.parse(value, flag)
        elif isinstance(value, list):
            value = parse_kv(value, flag)  # --data-arg K=V ... (a KEY=VALUE flag)
        values[name] = value
    return values


# -- the registries' knobs, shown by --help ----------------------------------------------------------
#: Per section, the registries whose entries and knobs its description lists, with the keywords
#: that are the caller's, not knobs.
SECTION_REGISTRIES: dict[str, list[tuple[str, RegistryRef, frozenset[str]]]] = {
    "data": [
        ("datasets (--data-arg)", config.DATASET_NAMES, frozenset()),
        ("tasks (--task-arg TASK:KEY=VALUE)", config.TASK_NAMES, frozenset()),
    ],
    "model": [("architectures (--arch-arg)", config.ARCH_NAMES, frozenset({"task_channels"}))],
    "method": [("methods (--method-arg)", config.METHOD_NAMES, frozenset({"num_tasks"}))],
}


def _section_text(section: str) -> LazyText | None:
    if section == "scheme":
        return LazyText(_scheme_lines)
    if section not in SECTION_REGISTRIES:
        return None
    return LazyText(lambda: "\n".join(_registry_lines(*entry) for entry in SECTION_REGISTRIES[section]))


def knob_text(factory: Callable[..., Any], skip: frozenset[str]) -> str:
    """``key=default, ...``: the keyword arguments of ``factory`` but ``skip`` ("-" when none)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return "?"
    parts = [
        p.name if p.default is p.empty else f"{p.name}={p.default!r}"
        for p in params
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in skip
    ]
    return ", ".join(parts) or "-"


def _registry_lines(title: str, ref: RegistryRef, skip: frozenset[str]) -> str:
    try:
        reg = ref.registry()
        names = reg.available()
    except Exception as e:  # noqa: BLE001 -- help must show even when a registry cannot load
        return f"{title}: cannot list ({e})"
    if ref is config.DATASET_NAMES:  # what a dataset factory takes from the config's own keys
        from densemtl.training.builders import STANDARD_DATA_KEYS

        skip = skip | frozenset(STANDARD_DATA_KEYS)
    return "\n".join([f"{title}:", *(f"  {n}: {knob_text(reg.get(n), skip)}" for n in names)])


def scheme_knob_text(name: str) -> str:
    """``key=default, ...``: the knobs of training scheme ``name`` ("" when it declares none)."""
    defaults = {f.name: default_of(f) for f, _ in spec_fields(config.TrainConfig)}
    declared = scheme_knobs(config.TrainConfig).get(name, [])
    if declared:
        return ", ".join(f"{k}={defaults[k]!r}" for k in declared)
    own = knob_text(config.SCHEME_NAMES.registry().get(name), frozenset({"cfg"}))  # a plugin scheme's own
    return "" if own == "-" else own


def _scheme_lines() -> str:
    """The schemes, each with its knobs (--scheme-arg KEY=VALUE)."""
    lines = ["schemes (--scheme-arg KEY=VALUE):"]
    for n in config.SCHEME_NAMES.names():
        lines.append(f"  {n}: {scheme_knob_text(n) or 'no knobs'}")
    return "\n".join(lines)
