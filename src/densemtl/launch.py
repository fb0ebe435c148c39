"""What torchrun tells a process in its environment, read without importing torch (the command
line's errors come before any of it): whether it was launched, its rank, who prints a mistake,
the collectives' timeout and its GPU."""

from __future__ import annotations

import os
import time

from densemtl.errors import ConfigError

#: Whether this process joined a torchrun process group (:func:`speaks`).
_joined = False


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def mark_joined() -> None:
    """Record that this process joined the run's process group (from then on each error says
    itself whether it is a quiet copy of rank 0's)."""
    global _joined
    _joined = True


def speaks() -> bool:
    """Whether this process prints a user's mistake: always in one process; under torchrun rank 0
    alone before the group is joined (every rank finds the same mistake in the same flags and files,
    and docs/cluster.md promises one line), and after it each rank as the error says (``quiet``)."""
    return _joined or not launched() or os.environ.get("RANK", "0") == "0"


#: Seconds a rank that leaves a mistake to rank 0 waits before it exits: torchrun stops every rank
#: when the first one exits, and rank 0 must have printed the line by then.
QUIET_WAIT_S = 10.0


def leave_it_to_rank_0() -> None:
    """Wait (at most :data:`QUIET_WAIT_S`) for rank 0 to print the mistake every rank found and
    exit, so that torchrun, which stops the other ranks when one exits, does not stop rank 0 first."""
    time.sleep(QUIET_WAIT_S)


def timeout_minutes() -> float:
    """``$DENSEMTL_DIST_TIMEOUT_MIN``, the minutes a collective may wait for a peer (default 120)."""
    text = os.environ.get("DENSEMTL_DIST_TIMEOUT_MIN", "120")
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not 0 < minutes < 10**6:
        raise ConfigError(f"DENSEMTL_DIST_TIMEOUT_MIN must be a number of minutes > 0, got {text!r}")
    return minutes


def rank_gpu(device: str) -> None:
    """Make this rank's GPU (``LOCAL_RANK``) the current device; a one-line ConfigError where the
    machine has no CUDA or fewer GPUs than the processes torchrun started on it."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu")
    count = torch.cuda.device_count()
    if local_rank() >= count:
        raise ConfigError(
            f"--device {device!r}: torchrun started more processes on this machine than its {count} GPU(s); "
            f"use --nproc_per_node {count} or fewer"
        )
    torch.cuda.set_device(local_rank())
