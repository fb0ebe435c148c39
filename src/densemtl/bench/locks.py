"""The locks that keep two processes off one bench or one run directory.

- One ``densemtl bench`` at a time per bench directory: it holds ``BENCH/.lock`` (``flock``,
  with its pid inside) for the whole run; the kernel releases it when the process ends, however.
- One process at a time per run directory: a job holds a ``flock`` on its run directory while it
  checks, trains and evaluates it (a baseline run is shared by every bench of the same settings).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from densemtl.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: no locks (a bench there is one process's business)
    fcntl = None  # type: ignore[assignment]

#: The lock file of a bench directory.
BENCH_LOCK = ".lock"
#: What the message of a stopped bench tells the user to do.
RESUME_HINT = "rerun the same command to continue"


@contextlib.contextmanager
def bench_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s bench lock while inside; a bench already run by another live process is a
    one-line :class:`ConfigError` naming that process."""
    if fcntl is None:
        yield
        return
    with (out / BENCH_LOCK).open("a+") as f:  # "a+": never truncates the holder's pid before we hold it
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            who = f"process {pid}" if pid.isdigit() else "another process"
            raise ConfigError(
                f"bench {out} is being run by {who}; wait for it to end (or stop it), then {RESUME_HINT}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def run_lock(run: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold a lock on the run directory ``run`` (created if missing) while inside; wait, saying so
    once, while another process holds it. The directory itself is locked, so it must not be removed
    while inside (empty it instead)."""
    run.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(run, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"densemtl bench: waiting for {run}: another process is running it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
