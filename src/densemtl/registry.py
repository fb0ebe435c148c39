"""A tiny name -> factory registry shared by datasets, models and balancing methods."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from densemtl.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: object, valid: Iterable[object]) -> str:
    """``" (did you mean 'x'?)"`` naming the closest of ``valid`` to ``name``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(name).lower(), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def squash(name: object) -> str:
    """``name`` lowercased without underscores, dashes and spaces: how names are matched when
    not found as written ("Nash_MTL", "nash-mtl" and "nashmtl" are one name)."""
    return "".join(c for c in str(name).lower() if c not in "_- ")


def _load_plugins() -> None:
    """Entry points of ``densemtl.plugins`` and a parent command's $DENSEMTL_IMPORTS, once per process."""
    from densemtl.plugins import load_pending

    load_pending()


class BadRegistration(ValueError):
    """A name that could never be given on the command line, or a factory that cannot be called:
    refused when registered (a plugin's: one line naming it, :mod:`densemtl.plugins`)."""


class DuplicateName(BadRegistration):
    """A name registered twice in one registry; ``kind`` and ``name`` say which."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} registered twice")
        self.kind = kind
        self.name = name


def bad_name(name: object) -> str:
    """Why ``name`` cannot be a registered name ("" when it can): a name is a non-empty string
    without commas (they separate names in ``--tasks``, ``--methods``, ``--archs``) or white space."""
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    if not name.strip():
        return "a name must not be empty"
    if "," in name or any(c.isspace() or not c.isprintable() for c in name):
        return "a name must have no commas, spaces or control characters (lists of names are comma-separated)"
    return ""


class Registry(Generic[T]):
    """Maps lowercase names to factories; ``create`` gives a clear error for unknown names.

    A name is found in any case, and with or without underscores and dashes when that matches
    one registered name (LibMTL's ``Nash_MTL`` is ``nashmtl``); :meth:`alias` adds other names.
    :meth:`canonical` is the registered name a spelling stands for.
    """

    def __init__(self, kind: str, returns: type | None = None, check: Callable[[Any], str] | None = None) -> None:
        self.kind = kind
        self.returns = returns  # what a factory must return (a plugin's that does not: one line)
        self.check = check  # what a plugin's object lacks ("" when nothing): one line naming the plugin
        self._factories: dict[str, Callable[..., T]] = {}
        self._tiny: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}  # squashed alias -> registered name

    def register(
        self, name: str, *, tiny: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name``. ``tiny`` are the knobs that make the
        entry small and fast, declared once and read by the registry-driven test suites."""

        bad = bad_name(name)
        if bad:
            raise BadRegistration(f"{self.kind} {name!r}: {bad}")

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if not callable(factory):
                raise BadRegistration(
                    f"{self.kind} {name!r} as {type(factory).__name__} {factory!r:.40}: a {self.kind} must be "
                    "registered as a function or class that makes one"
                )
            key = name.lower()
            if key in self._factories:
                raise DuplicateName(self.kind, key)
            self._factories[key] = factory
            self._tiny[key] = dict(tiny or {})
            return factory

        return deco

    def alias(self, alias: str, name: str) -> None:
        """Let ``alias`` (matched as :func:`squash` spells it) stand for the registered ``name``."""
        self.get(name)
        self._aliases[squash(alias)] = self.canonical(name)

    def aliases(self, name: str) -> list[str]:
        """The squashed aliases :meth:`alias` gave the registered ``name``, sorted."""
        key = self.canonical(name)
        return sorted(a for a, n in self._aliases.items() if n == key)

    def find(self, name: object) -> str | None:
        """The registered name ``name`` stands for (as written in any case, then squashed, then as
        an alias), or None."""
        _load_plugins()
        key = str(name).lower()
        if key in self._factories:
            return key
        squashed = squash(key)
        matches = [k for k in self._factories if squash(k) == squashed]
        if len(matches) == 1:
            return matches[0]
        found = self._aliases.get(squashed)
        return found if found in self._factories else None

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for; unknown -> ``ConfigError`` listing the valid ones."""
        key = self.find(name)
        if key is None:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(str(name).lower(), self._factories)}; "
                f"valid: {', '.join(self.available())}"
            )
        return key

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. an entry a test registered for itself); unknown: ConfigError."""
        key = self.canonical(name)
        del self._factories[key], self._tiny[key]
        self._aliases = {a: n for a, n in self._aliases.items() if n != key}

    def tiny(self, name: str) -> dict[str, Any]:
        """The knobs ``name`` declared for tiny, fast tests ({} when none)."""
        return dict(self._tiny[self.canonical(name)])

    def available(self) -> list[str]:
        """The registered names, sorted."""
        _load_plugins()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (any spelling :meth:`find` matches); unknown ->
        ``ConfigError`` listing the valid ones."""
        return self._factories[self.canonical(name)]

    def knobs(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments the factory accepts (its knobs)."""
        sig = inspect.signature(self.get(name))
        return {k: p for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def create(self, name: str, **kwargs: Any) -> T:
        """``name``'s factory called with ``kwargs``, each checked to be one of its knobs, of the
        default's type, before the call (:func:`check_call`): a TypeError the call raises is then
        raised inside the factory, a plugin's bug (:mod:`densemtl.plugin_faults`), never a bad knob."""
        factory = self.get(name)
        check_call(self.kind, name, factory, kwargs)
        from densemtl.plugin_faults import call_factory  # a plugin's failure: one line naming it

        return call_factory(self.kind, self.canonical(name), factory, kwargs, self.returns, self.check)


def check_call(kind: str, name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """A one-line ConfigError unless ``factory(**kwargs)`` binds to its signature: each key one of
    its knobs (did-you-mean and the valid ones otherwise), of the default's type, and every
    argument without a default given. A factory whose signature cannot be read is not checked."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = {k: p for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        for key in kwargs:
            if key not in valid:
                # knobs are the keywords with defaults; the others (task_channels, split) are the caller's
                listing = ", ".join(k for k, p in valid.items() if p.default is not p.empty) or "none"
                raise ConfigError(f"{kind} {name!r} has no knob {key!r}{did_you_mean(key, valid)}; valid: {listing}")
        for key, value in kwargs.items():
            check_knob_type(kind, name, key, value, valid[key].default)
    try:
        sig.bind(**kwargs)
    except TypeError as e:  # an argument without a default not given
        raise ConfigError(f"{kind} {name!r}: {e}") from None


def check_knob_type(kind: str, name: str, key: str, value: Any, default: Any) -> None:
    """A knob whose default is a bool, int, float or str must get a value of that type."""
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    if isinstance(value, list | tuple | dict):  # per-task values of a scalar knob are the method's to check
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return
    if not ok:
        raise ConfigError(
            f"{kind} {name!r} knob {key!r} must be a {type(default).__name__} (default {default!r}), got {value!r}"
        )
