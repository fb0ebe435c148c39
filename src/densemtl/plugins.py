"""Plugins: the user's own modules that register architectures, methods, tasks or datasets.

A plugin is any importable module whose import registers something (``@densemtl.models.register``,
``@densemtl.methods.register``, ``@densemtl.tasks.register``, ``@densemtl.data.register``). It reaches
densemtl in three ways, each loaded once per process where runs are built, never by a registry lookup
(a registry imports densemtl's own modules only): by every command before it looks a name up, by
``Trainer`` and by the rebuilding of a checkpoint's model (:func:`config_imports`), by ``load_run``,
and by the processes a bench or ``speed`` starts (:func:`load_pending`):

- ``--import pkg.module`` (repeatable) on ``train``, ``eval``, ``predict``, ``export``, ``bench``,
  ``speed`` and ``list``;
- ``imports: [pkg.module, ...]`` in a train config or bench grid file. A run's ``config.yaml`` and
  checkpoints (``.pt``, and an exported ``.safetensors``'s metadata) record the imports; a module a
  *file* names is imported only with the user's consent on the command line: ``--import MODULE``
  naming it, or ``--trust-imports`` ("import what the files I give name"). Without it the command
  refuses in one line naming the file and the modules (:func:`densemtl.cli.imports.consent`); from
  Python, ``densemtl.load_run(path, trust_imports=True)``. A ``Trainer`` of a
  ``TrainConfig(imports=[...])`` built in the user's own code imports them (that code is the consent);
- the entry-point group ``densemtl.plugins`` of an installed distribution
  (``[project.entry-points."densemtl.plugins"] name = "pkg.module"``, or ``"pkg.module:setup"`` for a
  function that is called): every such entry point is loaded the first time plugins are loaded
  (from Python, ``load_plugins()`` loads them).

A module that fails to import, or that registers a name already taken, is a one-line
:class:`~densemtl.errors.ConfigError` naming the module.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from densemtl.errors import ConfigError

#: The entry-point group that installed distributions declare their plugins in.
GROUP = "densemtl.plugins"
#: The modules a densemtl command imported, comma-separated, for the processes it starts (bench and
#: speed workers): :func:`load_pending` imports them there.
ENV = "DENSEMTL_IMPORTS"

_loaded: list[str] = []  # the modules imported through --import / imports:, in order
_entry_points: list[str] = []  # the entry points loaded, as "name = value"
_entry_points_done = False
_pending_done = False
_allowed: set[str] = set()  # the modules the running command may import (its --import, its --trust-imports)
_strict = False  # while a command runs without --trust-imports: a config naming a module not allowed is refused
_UNSET = object()
_env_before: Any = _UNSET  # $DENSEMTL_IMPORTS before export_to_children set it (restored by end_command)


def is_module_name(name: str) -> bool:
    """Whether ``name`` is a dotted module name: Python identifiers (``plügin`` is one) joined by dots."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))


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
        if not is_module_name(name):
            raise ConfigError(f"--import {name!r} is not a module name (a dotted name, e.g. mypackage.models)")
        _with_cwd_on_path()
        _guard(f"plugin {name!r}", lambda name=name: importlib.import_module(name), module=name)
        if name not in _loaded:  # a plugin that looks a name up while importing may get here first
            _loaded.append(name)
            new.append(name)
    return new


def load_pending() -> None:
    """The entry points, and the modules ``$DENSEMTL_IMPORTS`` names (a parent command's imports,
    which it had the user's consent for), loaded once per process: what a command, a ``Trainer`` and
    a bench or speed worker call first, so a spawned worker knows every name its parent knew. Cheap
    after the first call. A name
    that is not a module, or that does not import, is a one-line ConfigError naming the variable."""
    global _pending_done
    if _pending_done:
        return
    _pending_done = True
    load_entry_points()
    for name in (m.strip() for m in os.environ.get(ENV, "").split(",")):
        if not name or name in _loaded:
            continue
        if not is_module_name(name):
            raise ConfigError(f"${ENV} names {name!r}, not a module name; it lists the plugin modules a parent "
                              "densemtl command imported, comma-separated (unset it, or name modules)")  # fmt: skip
        try:
            load_plugins([name], entry_points=False)
        except ConfigError as e:
            raise ConfigError(f"${ENV} names {name!r}: {e}") from None


def export_to_children() -> None:
    """Name this process's imported modules in ``$DENSEMTL_IMPORTS`` for the processes it starts
    (until :func:`end_command` puts the variable back as it was)."""
    global _env_before
    if _loaded:
        if _env_before is _UNSET:
            _env_before = os.environ.get(ENV)
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
        obj = _guard(what, ep.load, module=ep.module)
        if ep.attr and callable(obj):
            _guard(what, obj, module=ep.module)
        _entry_points.append(f"{ep.name} = {ep.value}")


def _guard(what: str, action: Callable[[], Any], module: str = "") -> Any:
    """``action()``, any failure but an interrupt turned into one line naming ``what`` (and, for a
    bug in the plugin's code, its file and line: :mod:`densemtl.plugin_faults`)."""
    from densemtl.plugin_faults import PluginError, describe, failed, last_frame, noting_sigint, raised_interrupt
    from densemtl.registry import BadRegistration, DuplicateName

    try:
        with noting_sigint() as sigint:
            return action()
    except KeyboardInterrupt as e:  # raised by the plugin itself, not by a Ctrl-C: the plugin's
        if sigint:
            raise
        raise raised_interrupt(what, e, module) from None
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    except DuplicateName as e:  # Registry.register: a name already taken
        raise ConfigError(f"{what} registers {e.kind} {e.name!r}, a name already registered; choose another "
                          "name") from None  # fmt: skip
    except BadRegistration as e:  # Registry.register: a name no command line can give, a non-callable
        at = last_frame(e.__traceback__, module)
        raise PluginError(f"{what} registers {e}{f' at {at}' if at else ''}", e) from None
    except ModuleNotFoundError as e:
        own = bool(e.name) and f"{module}.".startswith(f"{e.name}.")  # the plugin itself, not its imports
        hint = "; is it installed, or on PYTHONPATH?" if own else ""
        at = "" if own else last_frame(e.__traceback__, module)
        raise PluginError(f"{what} failed to import: {describe(e)}{f' at {at}' if at else ''}{hint}", e) from None
    except SystemExit as e:  # sys.exit() while imported: say which plugin ended the process
        raise failed(what, e, module) from None
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; one line names it
        raise _import_failed(what, e, module) from None


def _import_failed(what: str, e: BaseException, module: str) -> ConfigError:
    from densemtl.plugin_faults import PluginError, describe, last_frame

    at = last_frame(e.__traceback__, module)
    return PluginError(f"{what} failed to import: {describe(e)}{f' at {at}' if at else ''}", e)


def _with_cwd_on_path() -> None:
    """``--import`` finds modules in the working directory, as ``python -m`` does: the console
    script ``densemtl`` does not put it on ``sys.path``, so it goes last (it shadows nothing)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


# -- consent: a module a file names is imported only when the command line allows it ---------------
def allowed(name: str) -> bool:
    """Whether importing ``name`` needs no more consent: the command line allowed it, a plugin
    loaded it, or it is imported already (importing it again runs nothing)."""
    return name in _allowed or name in _loaded or name in sys.modules


def refusal(where: str, names: list[str], why: str, how: str = "") -> ConfigError:
    """The one line refusing to import the ``names`` that file ``where`` names."""
    s = "s" if len(names) > 1 else ""
    how = how or f"pass {' '.join(f'--import {n}' for n in names)}, or --trust-imports"
    return ConfigError(f"{where} names plugin module{s} {', '.join(names)} ({why}); importing runs their code: {how}")


def grant(names: Iterable[str], *, trust: bool = False) -> None:
    """Let the running command import ``names`` (what its command line allowed: :mod:`densemtl.cli.imports`).
    From here until :func:`end_command`, a config naming a module not allowed is refused
    (:func:`config_imports`) unless ``trust`` (``--trust-imports``)."""
    global _strict
    _allowed.update(names)
    _strict = not trust


def end_command() -> None:
    """Forget the running command's consent and put ``$DENSEMTL_IMPORTS`` back (in-process callers
    of ``main`` run several commands)."""
    global _strict, _env_before
    _strict = False
    _allowed.clear()
    if _env_before is not _UNSET:  # the command's children are done: $DENSEMTL_IMPORTS as it was
        if _env_before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = _env_before
        _env_before = _UNSET


def config_imports(names: list[str], where: str = "the config") -> None:
    """What a run needs imported before anything of it is built, called where runs are built
    (``Trainer``, the model of a checkpoint, a bench job): :func:`load_pending`, then a config's
    ``imports``. A user's own code building a config consents; while a command runs, a module its
    command line did not allow is refused, not imported (whichever file the config came from)."""
    load_pending()
    if _strict:
        missing = [n for n in names if not allowed(n)]
        if missing:
            raise refusal(where, missing, "a file densemtl read names them")
    load_plugins(names)


def add_import_flag(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable) and ``--trust-imports`` on a command's parser (absent from the
    namespace unless given)."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        default=argparse.SUPPRESS,
        help="import this module first (repeatable): a plugin registering architectures, methods, tasks "
        "or datasets (see docs/plugins.md)",
    )
    parser.add_argument(
        "--trust-imports",
        action="store_true",
        default=argparse.SUPPRESS,
        help="import the plugin modules the files given name (a run's config.yaml, a checkpoint, --config, "
        "--grid); without it, or --import naming each, a file naming a module is refused: importing runs its code",
    )
