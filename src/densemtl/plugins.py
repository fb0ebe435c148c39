"""Plugins: the user's own modules that register architectures, methods, tasks or datasets.

A plugin is any importable module whose import registers something (``@densemtl.models.register``,
``@densemtl.methods.register``, ``@densemtl.tasks.register``, ``@densemtl.data.register``). It reaches
densemtl in three ways, each loaded once per process, before the first registry lookup:

- ``--import pkg.module`` (repeatable) on ``train``, ``eval``, ``predict``, ``export``, ``bench``,
  ``speed`` and ``list``;
- ``imports: [pkg.module, ...]`` in a train config or bench grid file. A run's ``config.yaml`` and
  checkpoints record the imports, so ``eval``, ``predict``, ``export`` and ``train --resume`` on that
  run import them again without being told;
- the entry-point group ``densemtl.plugins`` of an installed distribution
  (``[project.entry-points."densemtl.plugins"] name = "pkg.module"``, or ``"pkg.module:setup"`` for a
  function that is called): every such entry point is loaded the first time plugins are loaded.

A module that fails to import, or that registers a name already taken, is a one-line
:class:`~densemtl.errors.ConfigError` naming the module.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from densemtl.errors import ConfigError

#: The entry-point group that installed distributions declare their plugins in.
GROUP = "densemtl.plugins"
#: The modules a densemtl command imported, comma-separated, for the processes it starts (bench and
#: speed workers): :func:`load_pending` imports them there.
ENV = "DENSEMTL_IMPORTS"

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_loaded: list[str] = []  # the modules imported through --import / imports:, in order
_entry_points: list[str] = []  # the entry points loaded, as "name = value"
_entry_points_done = False
_pending_done = False


def loaded() -> list[str]:
    """The plugin modules and entry points loaded in this process, in order."""
    return [*_entry_points, *_loaded]


def load_plugins(imports: Iterable[str] = (), *, entry_points: bool = True) -> list[str]:
    """Import each module of ``imports`` (dotted names) once, after the ``densemtl.plugins`` entry
    points (loaded once per process; ``entry_points=False`` skips them). Idempotent; returns the
    modules imported by this call. A bad name, a failing import or a name registered twice is a
    one-line ConfigError."""
    if entry_points:
        load_entry_points()
    new: list[str] = []
    for name in imports:
        name = str(name).strip()
        if name in _loaded:
            continue
        if not _MODULE.match(name):
            raise ConfigError(f"--import {name!r} is not a module name (a dotted name, e.g. mypackage.models)")
        _with_cwd_on_path()
        _guard(f"plugin {name!r}", lambda name=name: importlib.import_module(name), module=name)
        if name not in _loaded:  # a plugin that looks a name up while importing may get here first
            _loaded.append(name)
            new.append(name)
    return new


def load_pending() -> None:
    """The entry points, and the modules ``$DENSEMTL_IMPORTS`` names (a parent command's imports),
    loaded once per process: what a registry lookup calls first, so a spawned worker knows every
    name its parent knew. Cheap after the first call."""
    global _pending_done
    if _pending_done:
        return
    _pending_done = True
    load_plugins([m for m in os.environ.get(ENV, "").split(",") if m.strip()])


def export_to_children() -> None:
    """Name this process's imported modules in ``$DENSEMTL_IMPORTS`` for the processes it starts."""
    if _loaded:
        os.environ[ENV] = ",".join(_loaded)


def load_entry_points() -> None:
    """Load every entry point of the ``densemtl.plugins`` group, once per process: a module is
    imported, a function (``pkg.module:setup``) is imported and called."""
    global _entry_points_done
    if _entry_points_done:
        return
    _entry_points_done = True  # first, so a plugin that looks names up while loading does not recurse
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.value in seen:  # one distribution found twice on sys.path
            continue
        seen.add(ep.value)
        what = f"plugin entry point {ep.name!r} ({ep.value})"
        obj = _guard(what, ep.load)
        if ep.attr and callable(obj):
            _guard(what, obj)
        _entry_points.append(f"{ep.name} = {ep.value}")


def _guard(what: str, action: Callable[[], Any], module: str = "") -> Any:
    """``action()``, any failure but an interrupt turned into one line naming ``what``."""
    try:
        return action()
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    except ValueError as e:
        if "registered twice" in str(e):  # Registry.register: a name already taken
            raise ConfigError(f"{what} registers {e.args[0].replace(' registered twice', '')}, a name already "
                              "registered; choose another name") from None  # fmt: skip
        raise ConfigError(f"{what} failed to import: {_describe(e)}") from None
    except ModuleNotFoundError as e:
        own = bool(e.name) and f"{module}.".startswith(f"{e.name}.")  # the plugin itself, not its imports
        hint = "; is it installed, or on PYTHONPATH?" if own else ""
        raise ConfigError(f"{what} failed to import: {_describe(e)}{hint}") from None
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; one line names it
        raise ConfigError(f"{what} failed to import: {_describe(e)}") from None


def _describe(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _with_cwd_on_path() -> None:
    """``--import`` finds modules in the working directory, as ``python -m`` does: the console
    script ``densemtl`` does not put it on ``sys.path``, so it goes last (it shadows nothing)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


# -- the imports a command needs -------------------------------------------------------------------
def _unique(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def yaml_imports(path: str | Path) -> list[str]:
    """The ``imports`` of a config or grid file (``[]`` if it has none); a bad file: ConfigError."""
    from densemtl.training.config import load_yaml, parse_imports

    value = load_yaml(path).get("imports")
    return [] if value is None else parse_imports(value, f"{path}: imports")


def checkpoint_imports(path: str | Path) -> list[str]:
    """The imports recorded with a checkpoint (a run directory, a ``.pt`` or an exported
    ``.safetensors``), read without building anything; ``[]`` when they cannot be read (the
    command that loads the checkpoint then says what is wrong with it)."""
    p = Path(path)
    run = p if p.is_dir() else (p.parent.parent if p.parent.name == "checkpoints" else None)
    try:
        if run is not None and (run / "config.yaml").is_file():
            return yaml_imports(run / "config.yaml")
        if not p.is_file():
            return []
        config = _safetensors_config(p) if p.suffix == ".safetensors" else _pt_config(p)
        from densemtl.training.config import parse_imports

        return parse_imports(config.get("imports") or [], f"{p}: imports")
    except Exception:  # any unreadable file (SafetensorError, UnpicklingError, ...): the loader says why
        return []


def _safetensors_config(p: Path) -> dict[str, Any]:
    import json

    from safetensors import safe_open

    with safe_open(str(p), framework="pt", device="cpu") as f:
        return dict(json.loads((f.metadata() or {}).get("config", "{}")))


def _pt_config(p: Path) -> dict[str, Any]:
    import torch

    state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    return dict(state.get("config") or {}) if isinstance(state, dict) else {}


def command_imports(args: Any) -> list[str]:
    """Every module a parsed command asks for: the files' ``imports`` (``--config``, ``--grid``, the
    run of ``train --resume``, the checkpoint of ``eval``/``predict``/``export``), then ``--import``."""
    names: list[str] = []
    for attr in ("config", "grid"):
        path = getattr(args, attr, None)
        if isinstance(path, str) and Path(path).is_file():
            names += yaml_imports(path)
    out = getattr(args, "out", None)
    if getattr(args, "resume", False) and out and (Path(out) / "config.yaml").is_file():
        names += yaml_imports(Path(out) / "config.yaml")
    checkpoint = getattr(args, "checkpoint", None)
    if isinstance(checkpoint, str):
        names += checkpoint_imports(checkpoint)
    return _unique([*names, *(getattr(args, "imports", None) or [])])


def add_import_flag(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable) on a command's parser (absent from the namespace unless given)."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        default=argparse.SUPPRESS,
        help="import this module first (repeatable): a plugin registering architectures, methods, tasks "
        "or datasets (see docs/plugins.md)",
    )
