"""A tiny name -> factory registry shared by datasets, tasks, models and balancing methods.

Every registry works the same way: ``@register("name", tiny={...})`` on a class or function
registers it and sets its ``name`` to the registered name. A package declares its own entries
with :meth:`Registry.lazy` (name -> the module that registers it), so that listing or matching
names imports nothing: a module is imported the first time one of its entries is looked up
(:meth:`Registry.get`, ``create``, ``knobs``, ``tiny``). Plugins are not loaded here: the
boundaries that build runs (the commands, ``Trainer``, ``load_run``, the bench and speed
workers) load them (:mod:`densemtl.plugins`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from densemtl.errors import ConfigError
from densemtl.knobs import check_call, did_you_mean
from densemtl.knobs import check_knob_type as check_knob_type  # re-exported

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def squash(name: object) -> str:
    """``name`` lowercased without underscores, dashes and spaces: how names are matched when
    not found as written ("Nash_MTL", "nash-mtl" and "nashmtl" are one name)."""
    return "".join(c for c in str(name).lower() if c not in "_- ")


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


class _Lazy:
    """An entry declared by :meth:`Registry.lazy` whose module has not registered it yet."""

    __slots__ = ("module",)

    def __init__(self, module: str) -> None:
        self.module = module

    def __repr__(self) -> str:
        return f"<registered on import of {self.module}>"


class Registry(Generic[T]):
    """Maps lowercase names to factories; ``create`` gives a clear error for unknown names.

    A name is found in any case, and with or without underscores and dashes when that matches
    one registered name (LibMTL's ``Nash_MTL`` is ``nashmtl``); :meth:`alias` adds other names.
    :meth:`canonical` is the registered name a spelling stands for. Names declared with
    :meth:`lazy` are listed and matched like the others; their module is imported when one of
    them is first looked up.
    """

    def __init__(self, kind: str, returns: type | None = None, check: Callable[[Any], str] | None = None) -> None:
        self.kind = kind
        self.returns = returns  # what a factory must return (a plugin's that does not: one line)
        self.check = check  # what a plugin's object lacks ("" when nothing): one line naming the plugin
        self._factories: dict[str, Callable[..., T] | _Lazy] = {}
        self._tiny: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}  # squashed alias -> registered name
        # what the module of each lazy entry registered, kept so that a registry put back to an
        # earlier copy (a test's) finds it again: the module is imported once per process
        self._loaded: dict[str, tuple[Callable[..., T], dict[str, Any]]] = {}

    def lazy(self, name: str, module: str) -> None:
        """Declare ``name`` as registered by ``module`` (a dotted name), imported when ``name`` is first
        looked up; until then it is listed and matched without importing anything."""
        bad = bad_name(name)
        if bad:
            raise BadRegistration(f"{self.kind} {name!r}: {bad}")
        key = name.lower()
        if key in self._factories:
            raise DuplicateName(self.kind, key)
        self._factories[key] = _Lazy(module)

    def register(self, name: str, *, tiny: dict[str, Any] | None = None) -> Callable[[F], F]:
        """Decorator registering a factory (a class or a function) under ``name`` and setting its
        ``name`` to the registered name (unless it is registered already under its own). ``tiny``
        are the knobs that make the entry small and fast, declared once and read by the
        registry-driven test suites."""

        bad = bad_name(name)
        if bad:
            raise BadRegistration(f"{self.kind} {name!r}: {bad}")

        def deco(factory: F) -> F:
            if not callable(factory):
                raise BadRegistration(
                    f"{self.kind} {name!r} as {type(factory).__name__} {factory!r:.40}: a {self.kind} must be "
                    "registered as a function or class that makes one"
                )
            key = name.lower()
            old = self._factories.get(key)
            declared = isinstance(old, _Lazy) and getattr(factory, "__module__", None) == old.module
            if old is not None and not declared:
                raise DuplicateName(self.kind, key)
            self._name(factory, key)
            self._factories[key] = factory
            self._tiny[key] = dict(tiny or {})
            if declared:
                self._loaded[key] = (factory, dict(tiny or {}))
            return factory

        return deco

    def _name(self, factory: Callable[..., Any], key: str) -> None:
        """Set ``factory.name`` to ``key``, unless ``factory`` is registered already under the name it has."""
        own = getattr(factory, "__dict__", {}).get("name")
        if isinstance(own, str) and own in self._factories and self._factories[own] is factory:
            return
        with contextlib.suppress(AttributeError, TypeError):  # a builtin or a slotted object keeps no name
            factory.name = key  # type: ignore[attr-defined]

    def alias(self, alias: str, name: str) -> None:
        """Let ``alias`` (matched as :func:`squash` spells it) stand for the registered ``name``."""
        self._aliases[squash(alias)] = self.canonical(name)

    def aliases(self, name: str) -> list[str]:
        """The squashed aliases :meth:`alias` gave the registered ``name``, sorted."""
        key = self.canonical(name)
        return sorted(a for a, n in self._aliases.items() if n == key)

    def find(self, name: object) -> str | None:
        """The registered name ``name`` stands for (as written in any case, then squashed, then as
        an alias), or None. Imports nothing."""
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
        del self._factories[key]
        self._tiny.pop(key, None)
        self._loaded.pop(key, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != key}

    def tiny(self, name: str) -> dict[str, Any]:
        """The knobs ``name`` declared for tiny, fast tests ({} when none)."""
        key = self.canonical(name)
        self._resolve(key)
        return dict(self._tiny[key])

    def available(self) -> list[str]:
        """The registered names (declared ones included), sorted. Imports nothing."""
        return sorted(self._factories)

    def name_of(self, factory: object) -> str | None:
        """The name under which ``factory`` itself (not a subclass of it) is registered, or None."""
        key = getattr(factory, "__dict__", {}).get("name")
        if not isinstance(key, str) or self.find(key) != key:
            return None
        return key if self._resolve(key) is factory else None

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (any spelling :meth:`find` matches), its module imported
        if it was declared with :meth:`lazy`; unknown -> ``ConfigError`` listing the valid ones."""
        return self._resolve(self.canonical(name))

    def _resolve(self, key: str) -> Callable[..., T]:
        """The factory of the registered name ``key``, importing the module of a lazy entry."""
        entry = self._factories[key]
        if not isinstance(entry, _Lazy):
            return entry
        if key not in self._loaded:
            importlib.import_module(entry.module)
        if key not in self._loaded:  # densemtl's own table and module disagree: a bug, not the user's
            raise RuntimeError(f"{self.kind} {key!r} is declared in {entry.module}, which registers no such name")
        factory, tiny = self._loaded[key]
        self._factories[key], self._tiny[key] = factory, dict(tiny)
        return factory

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
