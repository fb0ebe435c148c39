"""The remote executors of a bench: Ray tasks and Slurm jobs (see :mod:`densemtl.bench.executors`).

Both submit every job at once and collect the outcomes as they come (:class:`RemoteExecutor`);
each job runs :func:`run_remote` on its worker, which hands back its summary or one line of error.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densemtl.bench.executor_base import SLURM_TIME_MIN, Executor, Log, OnDone, require
from densemtl.errors import ConfigError, DenseMTLError, Interrupted, RuntimeFault

if TYPE_CHECKING:
    from densemtl.bench.grid import Job

#: Seconds between two looks at outstanding remote jobs.
POLL_S = 0.5
#: What a remote job hands back: ("done", summary, seconds), or ("error" | "crash", exit status, message),
#: a crash being an unexpected error or a lost worker, whose traceback is in the job's log.
Outcome = tuple[str, Any, Any]


# -- what runs on a remote worker ---------------------------------------------------------------
def run_remote(job: Job, cwd: str, threads: int) -> Outcome:
    """Run ``job`` in a Ray worker or a Slurm job: in the bench's working directory (when this
    machine has it: relative paths then mean the same), with ``threads`` torch threads. Errors come
    back as an outcome, not raised: their one line is made here, their traceback goes to the log."""
    import torch
    from tqdm import tqdm

    from densemtl.bench.job import run_job

    tqdm.set_lock(threading.RLock())  # no multiprocessing semaphore left behind by a cancelled job
    torch.set_num_threads(threads)
    here = os.getcwd()
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    t0 = time.perf_counter()
    try:
        summary = run_job(job, log=lambda line: print(line, flush=True))
    except Interrupted as e:
        return "error", 1, f"stopped by {_signal_name(e.exit_code - 128)} (its last checkpoint is kept)"
    except DenseMTLError as e:
        return "error", e.exit_code, str(e)
    except Exception as e:  # noqa: BLE001 - every failure goes back to the bench process as one line
        traceback.print_exc()
        return "crash", 1, f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(OSError):
            os.chdir(here)
    return "done", summary, time.perf_counter() - t0


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Cell:
    """:func:`run_remote` as submitit runs it: a Slurm job stopped at its time limit or preempted
    is requeued (submitit calls :meth:`checkpoint`) and continues from the run's last checkpoint."""

    def __call__(self, job: Job, cwd: str, threads: int) -> Outcome:
        return run_remote(job, cwd, threads)

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(_Cell(), *args)


class RemoteExecutor(Executor):
    """Submits every job at once, then collects outcomes as they come; cancels what is left when
    stopped. Subclasses say how to submit, wait and cancel."""

    def __init__(self, cpus: int, gpus: float) -> None:
        self.cpus = cpus
        self.gpus = gpus

    def describe(self) -> str:
        return f"{self.name} ({self.cpus} CPU(s), {self.gpus:g} GPU(s) per run)"

    @abstractmethod
    def submit(self, jobs: list[Job]) -> dict[Any, Job]:
        """Submit ``jobs``; a handle for each."""

    @abstractmethod
    def wait(self, pending: dict[Any, Job]) -> list[tuple[Any, Outcome]]:
        """The handles of ``pending`` that ended since the last look, with their outcomes; waits
        up to about :data:`POLL_S` for one."""

    @abstractmethod
    def cancel(self, pending: dict[Any, Job]) -> None:
        """Cancel every job of ``pending``."""

    def where_logs(self, handle: Any) -> str:
        """Where a failed job's traceback is, said after its message ('' when nowhere in particular)."""
        return ""

    def run(self, jobs: list[Job], on_done: OnDone, log: Log) -> None:
        pending: dict[Any, Job] = {}
        failures: list[tuple[Job, int, str]] = []
        try:
            pending = self.submit(jobs)
            while pending:
                for handle, (kind, value, extra) in self.wait(pending):
                    job = pending.pop(handle)
                    if kind == "done":
                        on_done(job, value, float(extra))
                        continue
                    first = str(extra).strip().splitlines()[0] if str(extra).strip() else "no message"
                    failures.append((job, int(value), first + (self.where_logs(handle) if kind == "crash" else "")))
                    log(f"densemtl bench: {job.kind} {job.name} failed on {self.name}: {failures[-1][2]}")
        except SystemError as e:
            self.cancel(pending)
            # A signal handler that raises inside a compiled call (Ray's wait checks for signals)
            # comes out wrapped: it is the signal's exception that the bench must see.
            cause = e.__cause__ or e.__context__
            if cause is not None and not isinstance(cause, Exception):
                raise cause from None
            raise
        except BaseException:
            self.cancel(pending)
            raise
        if failures:
            job, status, message = failures[0]
            more = f" (and {len(failures) - 1} more runs failed)" if len(failures) > 1 else ""
            text = (
                f"bench: {job.kind} {job.name} failed on {self.name}: {message}{more}; finished runs are kept; "
                "rerun the same command to continue"
            )
            raise ConfigError(text) if status == 2 else RuntimeFault(text)


class RayExecutor(RemoteExecutor):
    """Each job a Ray task with its CPU/GPU request, on the cluster at ``address`` (a local
    instance when None). A Ray already initialised in this process is used as it is."""

    name = "ray"

    def __init__(self, address: str | None, cpus: int, gpus: float) -> None:
        super().__init__(cpus, gpus)
        self.address = address
        self.ray = require("ray")
        self.started = False
        self.sigterm: Any = None
        reachable(address)

    def __enter__(self) -> RayExecutor:
        ray = self.ray
        if not ray.is_initialized():
            if threading.current_thread() is threading.main_thread():
                self.sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it; given back at exit
            try:
                ray.init(address=self.address, log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as e:
                self.__exit__()
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"--executor ray: cannot connect to {where}: {first}") from None
            self.started = True
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                # a local instance cannot grow: a request it cannot meet would wait forever
                have = ray.cluster_resources()
                cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
                if self.cpus > cpus or self.gpus > gpus:
                    self.__exit__()
                    raise ConfigError(
                        f"--executor ray: the local Ray instance has {cpus:g} CPU(s) and {gpus:g} GPU(s); "
                        f"a run asks for {self.cpus} CPU(s) and {self.gpus:g} GPU(s) (--cpus-per-job, --gpus-per-job)"
                    )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self.sigterm is not None:
            signal.signal(signal.SIGTERM, self.sigterm)
            self.sigterm = None

    def submit(self, jobs: list[Job]) -> dict[Any, Job]:
        task = self.ray.remote(run_remote)
        cwd = os.getcwd()
        return {
            task.options(num_cpus=self.cpus, num_gpus=self.gpus, name=f"densemtl-{job.name}").remote(
                job, cwd, self.cpus
            ): job
            for job in jobs
        }

    def wait(self, pending: dict[Any, Job]) -> list[tuple[Any, Outcome]]:
        ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=0)
        if not ready:
            time.sleep(POLL_S)  # here, not in Ray's wait, a signal's handler runs as plain Python
            return []
        ended: list[tuple[Any, Outcome]] = []
        for ref in ready:
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:  # the worker died, the node was lost, …
                outcome = ("crash", 1, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            ended.append((ref, outcome))
        return ended

    def cancel(self, pending: dict[Any, Job]) -> None:
        for ref in pending:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)


def reachable(address: str | None, timeout: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) address must accept a connection: Ray itself keeps
    retrying an unreachable one for minutes. ``auto`` and other forms are left to Ray."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\s/\[\]]+?)\]?:(\d+)", (address or "").strip())
    if m is None:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({why})") from None


class SlurmExecutor(RemoteExecutor):
    """Each job one task of a Slurm job array, submitted by submitit from ``folder`` (its pickles
    and logs); ``cluster`` 'local' runs them as local processes through submitit, for testing."""

    name = "slurm"

    def __init__(
        self,
        folder: Path,
        cpus: int,
        gpus: int,
        *,
        cluster: str = "slurm",
        partition: str | None = None,
        time_min: int = SLURM_TIME_MIN,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cpus, gpus)
        self.submitit = require("slurm")
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None] if cluster == "slurm" else []
        if missing:
            raise ConfigError(
                f"--executor slurm: {' and '.join(missing)} not on this machine's PATH; run the bench on a Slurm "
                "login node (or --slurm-cluster local to try it here)"
            )
        self.folder = folder
        self.cluster = cluster
        self.partition = partition
        self.time_min = time_min
        self.extra = dict(extra or {})

    def describe(self) -> str:
        where = "submitit's local processes" if self.cluster == "local" else f"partition {self.partition or 'default'}"
        return f"slurm ({where}, {self.cpus} CPU(s), {self.gpus:g} GPU(s), {self.time_min} min per run)"

    def submit(self, jobs: list[Job]) -> dict[Any, Job]:
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {
            "name": "densemtl-bench",
            "timeout_min": self.time_min,
            "cpus_per_task": self.cpus,
            "gpus_per_node": int(self.gpus),
            "tasks_per_node": 1,
            "nodes": 1,
        }
        if self.cluster == "slurm":
            if self.partition:
                params["slurm_partition"] = self.partition
            if self.extra:
                params["slurm_additional_parameters"] = self.extra
        executor.update_parameters(**params)
        cwd = os.getcwd()
        with self._controllers_log():
            handles = executor.map_array(_Cell(), jobs, [cwd] * len(jobs), [self.cpus] * len(jobs))
        return dict(zip(handles, jobs, strict=True))

    @contextlib.contextmanager
    def _controllers_log(self) -> Iterator[None]:
        """While submitting to submitit's local executor, this process's stderr is
        ``FOLDER/controllers.log``, which its controller processes inherit: stopped (a cancel or a
        Ctrl-C in the terminal), each prints a KeyboardInterrupt traceback there, not on the terminal."""
        if self.cluster != "local":
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "controllers.log").open("ab") as log:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)

    def wait(self, pending: dict[Any, Job]) -> list[tuple[Any, Outcome]]:
        ended: list[tuple[Any, Outcome]] = []
        for handle in pending:
            if not handle.done():
                continue
            try:
                outcome = handle.result()
            except Exception as e:  # noqa: BLE001 - killed, timed out, cancelled: submitit's own errors
                lines = [s for s in str(e).strip().splitlines() if s.strip()]
                outcome = ("crash", 1, lines[0] if lines else type(e).__name__)
            ended.append((handle, outcome))
        if not ended:
            time.sleep(POLL_S)
        return ended

    def where_logs(self, handle: Any) -> str:
        with contextlib.suppress(Exception):
            return f" (log: {handle.paths.stderr})"
        return ""

    def cancel(self, pending: dict[Any, Job]) -> None:
        if self.cluster == "local":  # SIGINT to each controller, which stops its job (SIGINT, then SIGKILL)
            for handle in pending:
                with contextlib.suppress(Exception):
                    handle.cancel(check=False)
            return
        arrays = sorted({str(handle.job_id).split("_")[0] for handle in pending})
        if arrays:  # the whole array at once: what is left of it is exactly what is pending
            with contextlib.suppress(OSError):
                subprocess.run(["scancel", *arrays], check=False, capture_output=True, timeout=60)
