"""A plugin's failures, reported as the plugin's: one line naming it, its file and line.

A plugin is the user's code (:mod:`densemtl.plugins`); when it raises while imported, or when a
factory it registered raises, returns something that is not what its registry makes, or ends the
process (``sys.exit``), the command says so in one line (:class:`PluginError`, exit 2) instead of a
traceback through densemtl. ``DENSEMTL_TRACEBACK=1`` in the environment prints the plugin's own
traceback first (:mod:`densemtl.cli.main`). densemtl's own factories are called as they are: a bug
of densemtl stays a traceback.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from densemtl.errors import ConfigError, DenseMTLError
from densemtl.knobs import check_call

#: ``DENSEMTL_TRACEBACK=1``: a plugin's failure also prints its full traceback.
TRACEBACK_ENV = "DENSEMTL_TRACEBACK"

#: object made by a plugin's factory -> (the words naming it, the heads' channels asked for, or None):
#: what :mod:`densemtl.plugin_contracts` checks the outputs of
_MADE: weakref.WeakKeyDictionary[Any, tuple[str, dict[str, int] | None]] = weakref.WeakKeyDictionary()


def note_made(obj: object, what: str, task_channels: object = None) -> None:
    """Remember that a plugin's factory made ``obj`` (``what`` names it)."""
    channels = dict(task_channels) if isinstance(task_channels, Mapping) else None
    with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced: checks name its class
        _MADE[obj] = (what, channels)


class PluginError(ConfigError):
    """A failure inside a user's plugin: the message names the plugin, its file and line; ``cause``
    is the plugin's own exception (its traceback printed with ``DENSEMTL_TRACEBACK=1``)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def is_own(obj: object) -> bool:
    """Whether ``obj`` (a function or class) is densemtl's own, not a plugin's."""
    return _in_package(str(getattr(obj, "__module__", "") or ""), "densemtl")


def _in_package(module: str, top: str) -> bool:
    return bool(top) and (module == top or module.startswith(f"{top}."))


def describe(e: BaseException) -> str:
    """``"ValueError: its first line"`` (the type alone when the message is empty)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def last_frame(tb: TracebackType | None, module: str) -> str:
    """``"file:line"`` of the last frame of ``tb`` in the package of ``module`` (the plugin's own
    code, not the libraries it called); else the last frame outside densemtl; "" when none."""
    top = module.split(".")[0]
    frames = traceback.extract_tb(tb)
    mods = [_frame_module(t) for t in _tb_frames(tb)]
    mine = [f for f, m in zip(frames, mods, strict=True) if _in_package(m, top)]
    if not mine:
        mine = [f for f, m in zip(frames, mods, strict=True) if not _in_package(m, "densemtl")]
        mine = [f for f in mine if not f.filename.startswith("<")]
    return f"{mine[-1].filename}:{mine[-1].lineno}" if mine else ""


def _tb_frames(tb: TracebackType | None) -> list[Any]:
    out = []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


def _frame_module(frame: Any) -> str:
    return str(frame.f_globals.get("__name__", "") or "")


def defined_at(obj: object) -> str:
    """``"file:line"`` where a plugin's function or class is defined ("" when unknown)."""
    try:
        file = inspect.getsourcefile(obj)  # type: ignore[arg-type]
        line = inspect.getsourcelines(obj)[1]  # type: ignore[arg-type]
    except (TypeError, OSError):
        return ""
    return f"{file}:{line}" if file else ""


@contextlib.contextmanager
def noting_sigint() -> Iterator[list[int]]:
    """While the user's code runs: a list that gets an entry when SIGINT arrives (the signal's
    handler otherwise as it was), so that a KeyboardInterrupt the code *raises* is told from the
    user's Ctrl-C. Outside the main thread, or under a handler set outside Python, every
    KeyboardInterrupt counts as the user's."""
    got: list[int] = []
    before = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if before is None:
        got.append(signal.SIGINT)
        yield got
        return

    def note(signum: int, frame: Any) -> None:
        got.append(signum)
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, note)
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, before)


def raised_interrupt(what: str, e: KeyboardInterrupt, module: str) -> PluginError:
    """The one line for a KeyboardInterrupt the user's code ``what`` raised itself (no Ctrl-C)."""
    where = last_frame(e.__traceback__, module)
    return PluginError(f"{what} raised KeyboardInterrupt{f' at {where}' if where else ''} without a Ctrl-C "
                       f"(a bug in the plugin; {TRACEBACK_ENV}=1 shows its traceback)", e)  # fmt: skip


def _owner(kind: str, name: str, factory: object) -> str:
    module = getattr(factory, "__module__", "?")
    return f"{kind} {name!r} of plugin {module!r}"


def failed(what: str, e: BaseException, module: str) -> PluginError:
    """The one line for ``e`` raised by the user's code ``what`` (of ``module``)."""
    where = last_frame(e.__traceback__, module)
    at = f" at {where}" if where else ""
    if isinstance(e, SystemExit):
        return PluginError(f"{what} ended the process (sys.exit({e.code!r})){at}; a plugin must not exit", e)
    return PluginError(f"{what} raised {describe(e)}{at} (a bug in the plugin; {TRACEBACK_ENV}=1 shows its "
                       "traceback)", e)  # fmt: skip


def call_factory(kind: str, name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any],
                 returns: type | None = None, check: Callable[[Any], str] | None = None) -> Any:  # fmt: skip
    """``factory(**kwargs)``, its ``kwargs`` first checked against its signature (a knob it does
    not take: a one-line ConfigError, :func:`densemtl.knobs.check_call`); a plugin's factory
    that then raises from its body (a TypeError included), exits, returns something that is not a
    ``returns``, or one that ``check`` finds lacking (its reason, "" when nothing lacks) is a
    :class:`PluginError` naming it, its file and line."""
    check_call(kind, name, factory, dict(kwargs))
    if is_own(factory):
        return factory(**kwargs)
    module = str(getattr(factory, "__module__", "") or "")
    what = _owner(kind, name, factory)
    try:
        with noting_sigint() as sigint:
            obj = factory(**kwargs)
    except KeyboardInterrupt as e:
        if sigint:
            raise  # the user's Ctrl-C
        raise raised_interrupt(what, e, module) from None
    except DenseMTLError:
        raise  # the plugin's own one-line refusal
    except MemoryError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's code may raise anything; one line names it
        raise failed(what, e, module) from None
    if returns is not None and not isinstance(obj, returns):
        at = defined_at(factory)
        raise PluginError(
            f"{what}{f' ({at})' if at else ''} returned {_kind_of(obj)}, not a {returns.__module__}.{returns.__name__}"
            f"; {'an' if kind[0] in 'aeiou' else 'a'} {kind} factory must return one"
        )
    gap = check(obj) if check is not None else ""
    if gap:
        at = defined_at(type(obj))
        raise PluginError(f"{what}{f' ({at})' if at else ''} does not follow the {kind} protocol: {gap}")
    at = defined_at(factory)
    note_made(obj, f"{what}{f' ({at})' if at else ''}", kwargs.get("task_channels"))
    return obj


def plugin_fault(e: BaseException, plugins: Iterable[str]) -> PluginError | None:
    """The one line for ``e`` when it was raised inside a loaded plugin's code (the innermost frame
    of its traceback in a package of ``plugins``, what :func:`densemtl.plugins.loaded` lists):
    naming the plugin, its file and line; None when no plugin's frame is in it (densemtl's own bug
    stays a traceback)."""
    tops = {m.split("=")[-1].strip().split(":")[0].split(".")[0] for m in plugins}
    hits = [
        (mod, f)
        for f, mod in zip(
            traceback.extract_tb(e.__traceback__), map(_frame_module, _tb_frames(e.__traceback__)), strict=True
        )
        if mod.split(".")[0] in tops
    ]
    if not hits:
        return None
    module, frame = hits[-1]
    return PluginError(f"plugin {module!r} raised {describe(e)} at {frame.filename}:{frame.lineno} (a bug in the "
                       f"plugin; {TRACEBACK_ENV}=1 shows its traceback)", e)  # fmt: skip


def _kind_of(obj: object) -> str:
    return "None" if obj is None else f"a {type(obj).__name__}"
