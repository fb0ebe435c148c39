"""What the trainer does differently in a run of several processes (``torchrun``).

Rank 0 alone writes the run directory, validates and prints; every rank trains its shard of each
global batch. An error that rank 0 finds before training (a bad ``--out``) is raised on every rank,
so that all of them stop with the same one line (printed once: the other ranks' copy is quiet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from densemtl import errors
from densemtl.distributed import Comm, local_rank, state_tensors
from densemtl.errors import DenseMTLError, RuntimeFault
from densemtl.training.member import Member

R = TypeVar("R")


def on_main(comm: Comm, fn: Callable[[], R]) -> R | None:
    """``fn()`` on rank 0; a :class:`DenseMTLError` it raises is raised on every rank (quiet on
    the others). Other ranks get None."""
    failure: tuple[str, str, int] | None = None
    result: R | None = None
    if comm.is_main:
        try:
            result = fn()
        except DenseMTLError as e:
            failure = (type(e).__name__, str(e), e.exit_code)
            if not comm.active:
                raise
    if comm.active:
        failure = comm.broadcast_object(failure)  # type: ignore[assignment]
    if failure is not None:
        name, message, code = failure
        cls = getattr(errors, name, DenseMTLError)
        exc = cls(message) if cls is not errors.Interrupted else cls(message, code)
        exc.quiet = not comm.is_main  # type: ignore[attr-defined]
        raise exc
    return result


def check_world(batch_size: int, comm: Comm) -> None:
    """A global batch must give every rank at least one sample (one line, printed by rank 0)."""
    if comm.active and batch_size < comm.world_size:
        error = errors.ConfigError(
            f"--batch-size {batch_size} is the global batch and is smaller than the {comm.world_size} "
            f"processes: use --batch-size {comm.world_size} or more (each rank trains on its share)"
        )
        error.quiet = not comm.is_main  # type: ignore[attr-defined]
        raise error


def rank_device(device: torch.device, comm: Comm) -> torch.device:
    """Each rank's own GPU (``LOCAL_RANK``) when the run is on CUDA; the device otherwise."""
    if comm.active and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def synced_tensors(member: Member) -> Iterator[Tensor]:
    """What must be equal on every rank: the member's parameters, its method's state and parameters."""
    yield from member.model.parameters()
    yield from member.method.parameters()
    yield from state_tensors(member.method.state_dict())


def check_in_sync(comm: Comm, members: Sequence[Member], where: str) -> None:
    """Stop the run (every rank) when a rank's parameters or method state differ from rank 0's."""
    if not comm.active:
        return
    for m in members:
        differ = comm.in_sync(list(synced_tensors(m)))
        if differ:
            who = f" of member {m.name!r}" if m.name else ""
            raise RuntimeFault(
                f"ranks out of sync at {where}: the parameters or method state{who} of rank(s) "
                f"{', '.join(map(str, differ))} differ from rank 0's; the run was stopped "
                "(report this with the command line)"
            )


def share_buffers(comm: Comm, members: Sequence[Member]) -> None:
    """Rank 0's batch-norm statistics on every rank (without --sync-bn, as DDP does each step)."""
    if comm.active:
        for m in members:
            comm.broadcast_(list(m.model.buffers()))
