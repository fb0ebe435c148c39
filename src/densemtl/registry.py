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


class Registry(Generic[T]):
    """Maps lowercase names to factories; ``create`` gives a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._tiny: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, *, tiny: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name``. ``tiny`` are the knobs that make the
        entry small and fast, declared once and read by the registry-driven test suites."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._factories[key] = factory
            self._tiny[key] = dict(tiny or {})
            return factory

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. an entry a test registered for itself); unknown: ConfigError."""
        self.get(name)
        key = str(name).lower()
        del self._factories[key], self._tiny[key]

    def tiny(self, name: str) -> dict[str, Any]:
        """The knobs ``name`` declared for tiny, fast tests ({} when none)."""
        self.get(name)
        return dict(self._tiny[str(name).lower()])

    def available(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (any case); unknown -> ``ConfigError`` listing the valid ones."""
        key = str(name).lower()
        if key not in self._factories:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(key, self._factories)}; "
                f"valid: {', '.join(self.available())}"
            )
        return self._factories[key]

    def knobs(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments the factory accepts (its knobs)."""
        sig = inspect.signature(self.get(name))
        return {k: p for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def create(self, name: str, **kwargs: Any) -> T:
        """``name``'s factory called with ``kwargs``, each checked to be one of its knobs, of the default's type."""
        factory = self.get(name)
        sig = inspect.signature(factory)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        if not accepts_any:
            valid = self.knobs(name)
            for key in kwargs:
                if key not in valid:
                    # knobs are the keywords with defaults; the others (task_channels, split) are the caller's
                    listing = ", ".join(k for k, p in valid.items() if p.default is not p.empty) or "none"
                    raise ConfigError(
                        f"{self.kind} {name!r} has no knob {key!r}{did_you_mean(key, valid)}; valid: {listing}"
                    )
            for key, value in kwargs.items():
                check_knob_type(self.kind, name, key, value, valid[key].default)
        return factory(**kwargs)


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
