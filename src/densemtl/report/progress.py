"""Progress of a long loop: a tqdm bar on a terminal, one plain line every N seconds otherwise.

Off a terminal (a log file, a pipe, CI, ``nohup``) a bar either disappears (tqdm turns itself
off) or fills the file with carriage-return updates. There, ``densemtl train``, ``bench`` and
``speed`` write instead at most one line every ``DENSEMTL_PROGRESS_EVERY`` seconds (default 30;
0 turns the lines off), all in one format, to standard output, beside the lines they log (the
epoch table, the finished runs); standard error keeps only warnings and errors::

    densemtl train: epoch 3/15, step 120/400 (30%), 45s elapsed, ETA 1m40s (run ~25m10s), seg=0.412

The ETA is the remaining count at the rate measured so far; ``later`` adds the steps still to
come after this loop (the run's later epochs; training steps only) for the "run" estimate. Before the first step is
done the ETA is ``?`` (or the caller's ``estimate``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any

from tqdm import tqdm

from densemtl.errors import ConfigError

#: The environment variable that sets the seconds between two progress lines off a terminal.
PROGRESS_ENV = "DENSEMTL_PROGRESS_EVERY"
#: Seconds between two progress lines when the variable is unset.
DEFAULT_EVERY = 30.0


def progress_every(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between two progress lines: ``$DENSEMTL_PROGRESS_EVERY`` (0: none) or 30."""
    env = os.environ if environ is None else environ
    text = env.get(PROGRESS_ENV, "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{PROGRESS_ENV}={text!r} must be a number of seconds >= 0 (0: no progress lines)")
    return value


def duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``2h03m``: a duration at the precision a progress line needs."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (where a live bar can redraw itself)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


class ProgressLine:
    """A count towards ``total`` that writes one line at most every ``every`` seconds.

    Used like the part of tqdm the commands use: iterate over it (or call :meth:`update`), and
    :meth:`set_postfix` / :meth:`set_postfix_str` for what follows the ETA. ``clock`` is a
    monotonic time in seconds (tests pass a fake one). Safe to :meth:`tick` from another thread.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        prefix: str = "densemtl",
        unit: str = "step",
        initial: int = 0,
        later: int = 0,
        estimate: float | None = None,
        every: float = DEFAULT_EVERY,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc, self.prefix, self.unit = desc, prefix, unit
        self.n = self.initial = initial
        self.later = later
        self.estimate = estimate
        self.every = every
        self.stream = stream
        self.clock = clock
        self.postfix = ""
        self.started = clock()
        self.last_write = self.updated = self.started
        self.lines = 0  # lines written
        self._lock = threading.Lock()

    # -- tqdm's surface ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            return
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        now = self.clock()
        with self._lock:
            self.n += n
            self.updated = now
        self.tick(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        """Nothing to clear: a line, once written, stays."""

    # -- the line ---------------------------------------------------------------------------------
    def eta(self, now: float | None = None) -> tuple[float | None, float | None]:
        """Seconds left (this loop, and with ``later`` the whole run); None while unknown.

        The rate is the one at the last update, and the time since then counts down: between two
        slow updates (a bench's runs) the ETA falls instead of growing with the wait.
        """
        now = self.clock() if now is None else now
        done = self.n - self.initial
        spent = self.updated - self.started
        if done <= 0 or spent <= 0:
            if self.estimate is None:
                return None, None
            left = max(0.0, self.estimate - (now - self.started))
            return left, left
        if self.total is None:
            return None, None
        per_item = spent / done
        waited = now - self.updated
        left = max(0.0, (self.total - self.n) * per_item - waited)
        run = max(0.0, (self.total - self.n + self.later) * per_item - waited) if self.later else None
        return left, run

    def line(self, now: float | None = None) -> str:
        """The progress line as it stands at ``now``."""
        now = self.clock() if now is None else now
        head = f"{self.prefix}: {self.desc}, " if self.desc else f"{self.prefix}: "
        if self.total:
            pct = 100.0 * self.n / self.total
            count = f"{self.unit} {self.n}/{self.total} ({pct:.0f}%)"
        else:
            count = f"{self.unit} {self.n}"
        left, run = self.eta(now)
        eta = "ETA ?" if left is None else f"ETA {'~' if self.n == self.initial else ''}{duration(left)}"
        if run is not None and self.later:
            eta += f" (run ~{duration(run)})"
        text = f"{head}{count}, {duration(now - self.started)} elapsed, {eta}"
        return f"{text}, {self.postfix}" if self.postfix else text

    def tick(self, now: float | None = None) -> bool:
        """Write the line if ``every`` seconds have passed since the last one (or the start)."""
        now = self.clock() if now is None else now
        with self._lock:
            if self.every <= 0 or now - self.last_write < self.every:
                return False
            self.last_write = now
            text = self.line(now)
            self.lines += 1
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(text + "\n")  # one write: a line never interleaves with another thread's
        stream.flush()
        return True


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    prefix: str = "densemtl",
    unit: str = "step",
    initial: int = 0,
    later: int = 0,
    enabled: bool = True,
    stream: IO[str] | None = None,
    every: float | None = None,
    terminal: bool | None = None,
) -> Any:
    """A progress wrapper of ``iterable``: a tqdm bar on a terminal (standard error, as tqdm's), a
    :class:`ProgressLine` to ``stream`` (default standard output) off one, every ``every`` seconds
    (default :func:`progress_every`), nothing when not ``enabled``. ``terminal`` default: whether
    standard error is one.

    Whatever it returns iterates like ``iterable`` and takes ``update``, ``set_postfix``,
    ``set_postfix_str`` and ``close``.
    """
    if terminal is None:
        terminal = is_terminal(sys.stderr)
    if enabled and terminal:
        return tqdm(
            iterable,
            desc=desc or None,
            total=total,
            initial=initial,
            unit=unit,
            leave=False,
            dynamic_ncols=True,
        )
    seconds = progress_every() if every is None else every
    if not enabled or seconds <= 0:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    return ProgressLine(
        iterable,
        total=total,
        desc=desc,
        prefix=prefix,
        unit=unit,
        initial=initial,
        later=later,
        every=seconds,
        stream=stream,
    )


def background_line(
    total: int,
    *,
    desc: str = "",
    prefix: str = "densemtl",
    unit: str = "step",
    estimate: float | None = None,
    stream: IO[str] | None = None,
    every: float | None = None,
    terminal: bool | None = None,
) -> ProgressLine | None:
    """The progress line of work that runs elsewhere (a bench's runs in other processes), for
    :func:`ticking`; None on a terminal (where the finished runs' own lines say enough: standard
    error is one, unless ``terminal`` says) or when the lines are off."""
    if terminal is None:
        terminal = is_terminal(sys.stderr)
    seconds = progress_every() if every is None else every
    if terminal or seconds <= 0:
        return None
    return ProgressLine(
        total=total, desc=desc, prefix=prefix, unit=unit, estimate=estimate, every=seconds, stream=stream
    )


@contextlib.contextmanager
def ticking(line: ProgressLine | None, poll: float = 1.0) -> Iterator[None]:
    """While inside, a daemon thread calls ``line.tick()`` every ``poll`` seconds: progress lines
    for a loop that waits on other processes (a bench) rather than stepping itself."""
    if line is None or line.every <= 0:
        yield
        return
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(min(poll, line.every)):
            with contextlib.suppress(Exception):  # a closed stream at exit must not raise in a thread
                line.tick()

    thread = threading.Thread(target=run, name="densemtl-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=poll + 1.0)
