"""Where a bench runs its jobs: this machine's processes, a Ray cluster, or Slurm through submitit.

Every executor runs the same :func:`~densemtl.bench.job.run_job` on each job, which trains
into that job's own run directory (under its lock) and nothing else; the bench process alone
reads the finished runs back and writes the tables. So a grid stopped under one executor is
continued by any other, and the tables do not depend on which one ran the cells.

- :class:`LocalExecutor`: one job after another in this process, or ``--jobs`` spawned workers
  (:func:`~densemtl.bench.processes.run_parallel`).
- :class:`~densemtl.bench.remote.RayExecutor`: each job a Ray task asking for ``--cpus-per-job``
  CPUs and ``--gpus-per-job`` GPUs, on the cluster at ``--ray-address`` (a local instance when
  omitted).
- :class:`~densemtl.bench.remote.SlurmExecutor`: each job one task of a Slurm job array,
  submitted by ``submitit`` (``--slurm-cluster local`` runs them as local processes through
  submitit, for testing).

A remote job that fails is reported (one log line) as it ends, the others run on, and the bench
then stops with one line naming the first failed job and its cause. SIGINT or SIGTERM cancel
every outstanding task or job; their runs continue from their last checkpoint next time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densemtl.bench.executor_base import SLURM_TIME_MIN as SLURM_TIME_MIN  # re-exported
from densemtl.bench.executor_base import Executor as Executor  # re-exported
from densemtl.bench.executor_base import Log, OnDone
from densemtl.errors import ConfigError

if TYPE_CHECKING:  # not at run time: the CLI reads this module's names while it builds its parser
    from densemtl.bench.grid import Job

#: The names ``--executor`` takes.
EXECUTORS = ("local", "ray", "slurm")
#: The flag of each Slurm option (the keys of :func:`make_executor`'s ``slurm``).
SLURM_FLAGS = {
    "cluster": "--slurm-cluster",
    "partition": "--slurm-partition",
    "time_min": "--slurm-time-min",
    "extra": "--slurm-arg",
}


class LocalExecutor(Executor):
    """This machine: in this process, or ``n_procs`` spawned workers when > 1."""

    name = "local"

    def __init__(self, n_procs: int = 1) -> None:
        self.n_procs = n_procs

    def describe(self) -> str:
        return f"{self.n_procs} process(es)"

    def run(self, jobs: list[Job], on_done: OnDone, log: Log) -> None:
        from densemtl.bench.job import run_job
        from densemtl.bench.processes import run_parallel

        if self.n_procs <= 1 or len(jobs) <= 1:
            for job in jobs:
                t0 = time.perf_counter()
                on_done(job, run_job(job, log=log), time.perf_counter() - t0)
        else:
            # One job at a time to each worker: on an error or a signal nothing else has started,
            # and the workers die with this process (see densemtl.bench.processes).
            threads = max(1, (os.cpu_count() or 1) // self.n_procs)
            run_parallel(jobs, self.n_procs, threads, on_done)


def make_executor(
    name: str,
    out: Path,
    *,
    jobs: int = 1,
    cpus: int | None = None,
    gpus: float | None = None,
    ray_address: str | None = None,
    slurm: dict[str, Any] | None = None,
    device: str = "cpu",
) -> Executor:
    """The executor ``name`` with its options checked (one-line :class:`ConfigError`s): ``cpus``
    and ``gpus`` per job (default 1 and 0), ``ray_address`` for Ray only, ``slurm`` (``cluster``,
    ``partition``, ``time_min``, ``extra``) for Slurm only; ``jobs`` is the local process count,
    ``device`` the runs' ``--device`` (a GPU asked for must be used, and one used must be asked for)."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor {name!r} is not an executor; valid: {', '.join(EXECUTORS)}")
    if ray_address is not None and name != "ray":
        raise ConfigError("--ray-address is for --executor ray; add --executor ray or leave it out")
    slurm = {k: v for k, v in (slurm or {}).items() if v is not None}
    if slurm and name != "slurm":
        flag = SLURM_FLAGS[sorted(slurm)[0]]
        raise ConfigError(f"{flag} is for --executor slurm; add --executor slurm or leave it out")
    if name == "local":
        if cpus is not None or gpus is not None:
            flag = "--cpus-per-job" if cpus is not None else "--gpus-per-job"
            raise ConfigError(
                f"{flag} is for --executor ray or slurm; a local bench runs --jobs processes of cores // jobs threads"
            )
        return LocalExecutor(jobs)
    cpus = 1 if cpus is None else cpus
    gpus = 0.0 if gpus is None else gpus
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(f"--cpus-per-job must be an integer >= 1, got {cpus!r}")
    if not isinstance(gpus, int | float) or not 0 <= gpus < float("inf"):
        raise ConfigError(f"--gpus-per-job must be a number >= 0, got {gpus!r}")
    if gpus > 0 and device == "cpu":
        raise ConfigError(f"--gpus-per-job {gpus:g} but the runs train on --device cpu; add --device cuda (or auto)")
    if gpus == 0 and device.startswith("cuda"):
        raise ConfigError(f"--device {device} needs a GPU per run on {name}; add --gpus-per-job 1")
    from densemtl.bench.remote import RayExecutor, SlurmExecutor

    if name == "ray":
        if ray_address is not None and not ray_address.strip():
            raise ConfigError("--ray-address is empty; give host:port, ray://host:port or auto")
        return RayExecutor(ray_address, cpus, float(gpus))
    if gpus != int(gpus):
        raise ConfigError(f"--gpus-per-job must be a whole number with --executor slurm, got {gpus:g}")
    time_min = slurm.get("time_min", SLURM_TIME_MIN)
    if isinstance(time_min, bool) or not isinstance(time_min, int) or time_min < 1:
        raise ConfigError(f"--slurm-time-min must be an integer >= 1, got {time_min!r}")
    cluster = slurm.get("cluster", "slurm")
    if cluster not in ("slurm", "local"):
        raise ConfigError(f"--slurm-cluster must be slurm or local, got {cluster!r}")
    return SlurmExecutor(
        out / ".submitit",
        cpus,
        int(gpus),
        cluster=cluster,
        partition=slurm.get("partition"),
        time_min=time_min,
        extra=slurm.get("extra"),
    )
