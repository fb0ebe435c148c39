"""How a bench runs its jobs in processes (the locks that keep two runs off one directory are
:mod:`densemtl.bench.locks`).

- Workers are spawned processes that the bench hands one job at a time. Each dies with the bench
  process (``PR_SET_PDEATHSIG`` on Linux, and everywhere a thread that watches the parent), so a
  ``kill -9`` of the bench leaves nothing running.
- SIGINT and SIGTERM stop a bench promptly: queued jobs are dropped, running ones are terminated
  (their runs continue from their last checkpoint next time), and :class:`Interrupted` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import TYPE_CHECKING, Any

from densemtl.bench.locks import BENCH_LOCK as BENCH_LOCK  # re-exported
from densemtl.bench.locks import RESUME_HINT as RESUME_HINT  # re-exported
from densemtl.bench.locks import bench_lock as bench_lock  # re-exported
from densemtl.bench.locks import run_lock as run_lock  # re-exported
from densemtl.errors import DenseMTLError, Interrupted, RuntimeFault
from densemtl.training.signals import SignalScope

if TYPE_CHECKING:  # not at run time: a worker imports this module first, and must start watching fast
    from densemtl.bench.grid import Job

#: Seconds a terminated worker gets to exit (a trainer may finish its step) before it is killed.
GRACE_S = 10.0
#: Seconds between two looks of a worker at its parent.
WATCH_S = 0.5


# -- signals ------------------------------------------------------------------------------------
class Stopped(BaseException):
    """SIGINT or SIGTERM arrived in the bench process (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopOnSignals(SignalScope):
    """While inside, the first SIGINT or SIGTERM raises :class:`Stopped`; after that, or once
    :meth:`disarm` is called (as a caller starts handling an error), signals are ignored so the
    clean-up is not cut short. Only in the main thread; elsewhere nothing changes."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise Stopped(signum)

    def disarm(self) -> None:
        self.armed = False

    def __enter__(self) -> StopOnSignals:
        super().__enter__()
        return self


def interrupted(signum: int, done: int, total: int) -> Interrupted:
    """The one-line error of a bench stopped by ``signum`` (exit status 128 + signum)."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return Interrupted(
        f"bench stopped by {name} with {done} of {total} runs finished (unfinished runs continue from their "
        f"last checkpoint); {RESUME_HINT}",
        128 + signum,
    )


# -- workers ------------------------------------------------------------------------------------
class WorkerError(RuntimeError):
    """An unexpected error in a worker; the message carries the worker's traceback."""


def _die_with(parent: int) -> None:
    """End this process as soon as ``parent`` is gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with it

    def watch() -> None:  # also catches a parent that died before prctl, and works off Linux
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os._exit(1)

    threading.Thread(target=watch, name="densemtl-parent-watch", daemon=True).start()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it is a user-facing error that survives pickling, else a :class:`WorkerError`."""
    if isinstance(exc, DenseMTLError | OSError | MemoryError):
        with contextlib.suppress(Exception):
            pickle.dumps(exc)
            return exc
    text = "".join(traceback.format_exception(exc))
    return WorkerError(f"{type(exc).__name__}: {exc}\n\nin the worker process:\n{text}")


def worker_main(conn: Connection, parent: int, threads: int) -> None:
    """A worker: run the jobs the bench process sends (until ``None``), answer each with
    ``("done", summary)``, or ``("error", exception)`` and end."""
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the bench process, which stops us
    import torch
    from tqdm import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a killed worker leaves behind and
    # the resource tracker then warns about on the user's terminal; a worker needs a thread lock only.
    tqdm.set_lock(threading.RLock())

    from densemtl.bench.job import run_job

    torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            reply: tuple[str, Any] = ("done", run_job(job, log=lambda line: print(line, flush=True)))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the bench process
            reply = ("error", _portable(e))
        try:
            conn.send(reply)
        except OSError:
            return
        if reply[0] == "error":
            return  # the bench process stops on an error: no reason to wait for its word


@dataclass
class _Worker:
    proc: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    job: Job | None = None
    t0: float = 0.0


def _died(w: _Worker) -> RuntimeFault:
    w.proc.join(1.0)
    code = w.proc.exitcode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    else:
        how = f"exited with status {code}"
    name = f"{w.job.kind} {w.job.name}" if w.job else "a job"
    return RuntimeFault(f"bench: the process running {name} {how}; {RESUME_HINT}")


def _stop(workers: list[_Worker], clean: bool) -> None:
    """End every worker: politely when ``clean`` (all idle), else terminate, then kill after GRACE_S."""
    workers = [w for w in workers if w.proc.pid is not None]  # started
    for w in workers:
        if w.proc.is_alive():
            if clean:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            else:
                w.proc.terminate()
    deadline = time.monotonic() + GRACE_S
    for w in workers:
        w.proc.join(max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        w.conn.close()


def run_parallel(
    jobs: list[Job], n_procs: int, threads: int, on_done: Callable[[Job, dict[str, Any], float], None]
) -> None:
    """Run ``jobs`` in ``n_procs`` spawned workers, one job at a time each, calling
    ``on_done(job, summary, seconds)`` in this process as each finishes. A failed job stops the rest
    and raises its error; so does a worker that dies. Raises :class:`Stopped` on SIGINT/SIGTERM
    when inside :class:`StopOnSignals`; the workers are gone whenever this returns or raises."""
    ctx = multiprocessing.get_context("spawn")
    queue = deque(jobs)
    workers: list[_Worker] = []
    clean = False
    try:
        for i in range(min(n_procs, len(queue))):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(theirs, os.getpid(), threads), name=f"densemtl-bench-{i}")
            workers.append(_Worker(proc, ours))
            proc.start()
            theirs.close()  # so that our end reads EOF when the worker dies
        busy: dict[Connection, _Worker] = {}

        def hand_out(w: _Worker) -> None:
            w.job, w.t0 = queue.popleft(), time.perf_counter()
            try:
                w.conn.send(w.job)
            except OSError:
                raise _died(w) from None
            busy[w.conn] = w

        for w in workers:
            hand_out(w)
        while busy:
            for conn in wait(list(busy)):
                w = busy.pop(conn)  # type: ignore[arg-type]
                try:
                    kind, value = conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    raise _died(w) from None
                if kind == "error":
                    raise value
                assert w.job is not None
                on_done(w.job, value, time.perf_counter() - w.t0)
                w.job = None
                if queue:
                    hand_out(w)
        clean = True
    finally:
        _stop(workers, clean)
