"""Training across processes: what the ranks of a ``torchrun`` run exchange, and nothing else.

Every rank holds the whole model and method and trains on its shard of each global batch. Rank
r's share of a global batch of n samples is a_r = n_r / n, and the run's loss of task t is the
mean over the global batch, L_t = Σ_r a_r L_t^r, so that a step is the step one process would
take on the whole batch. What crosses between processes depends on the gradient source:

- every mode: the T task losses (their values: the method sees the global L_t), and the
  gradients of whatever each rank computed locally, as Σ_r a_r ∇^r (bucketed all-reduce, as
  torch's DistributedDataParallel does, with parameters that got no gradient anywhere left
  without one);
- representation mode: the per-task gradients at rank r's representation are the rows of block r
  of one global Jacobian (scaled by a_r), so a method of the Gramian needs only
  G = Σ_r a_r² G^r (T × T); any other method gathers the blocks;
- parameters and gramian modes: the Jacobian J = Σ_r a_r J^r itself (T × P), row by row, each
  row's reduction overlapped with the next row's backward pass.

Everything every rank then computes from those identical inputs (the method's weights, its
state, its random draws from identically seeded generators) is identical, so the ranks stay in
sync by construction; :meth:`Comm.in_sync` checks that they did.

:class:`Comm` of one process (``world_size == 1``) does nothing, and costs nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.utils.data import Sampler

from densemtl.errors import ConfigError, RuntimeFault
from densemtl.launch import launched as launched  # re-exported
from densemtl.launch import local_rank as local_rank  # re-exported
from densemtl.launch import mark_joined, rank_gpu, timeout_minutes

#: The largest gradient bucket one all-reduce carries (DDP's default ``bucket_cap_mb``).
BUCKET_BYTES = 25 * 2**20


@dataclass
class Comm:
    """The ranks of one run and the collectives the engine and trainer use.

    ``share`` is this rank's a_r for the current step (:meth:`set_batch`); ``sent_bytes`` counts
    what this rank put into collectives (an all-reduce of b bytes counts b), for ``densemtl speed``.
    """

    world_size: int = 1
    rank: int = 0
    share: float = 1.0
    sent_bytes: int = 0
    #: where the collectives' own small tensors live (nccl needs them on this rank's GPU)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes the run directory and the console."""
        return self.rank == 0

    @classmethod
    def current(cls) -> Comm:
        """The default process group's ranks, or one process when none is initialised."""
        if dist.is_available() and dist.is_initialized():
            cuda = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
            return cls(dist.get_world_size(), dist.get_rank(), device=device)
        return cls()

    # -- plumbing ---------------------------------------------------------------------------------
    def _all_reduce(self, t: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM, async_op: bool = False):  # type: ignore[no-untyped-def]
        self.sent_bytes += t.numel() * t.element_size()
        return dist.all_reduce(t, op=op, async_op=async_op)

    def sum_(self, t: Tensor) -> Tensor:
        """Σ_r t^r, in place."""
        if self.active:
            self._all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """Whether ``flag`` is true on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device or self.device)
        self._all_reduce(t, dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    # -- per step ---------------------------------------------------------------------------------
    def set_batch(self, n_local: int, device: torch.device | None = None) -> int:
        """Start a step of ``n_local`` samples here: sets ``share`` = n_local / n and returns n."""
        if not self.active:
            self.share = 1.0
            return n_local
        t = torch.tensor([float(n_local)], dtype=torch.float64, device=device or self.device)
        self._all_reduce(t)
        n = int(t.item())
        self.share = n_local / n
        return n

    def globalize(self, parts: Sequence[Tensor]) -> list[Tensor]:
        """The task losses with the global values Σ_r a_r L_t^r and this rank's gradients: a
        method's weights are then those of the whole batch, and the weighted mean of the ranks'
        gradients (:meth:`reduce_grads`) is the whole batch's gradient (also through a nonlinear
        transform of the loss, since its derivative is taken at the global value)."""
        if not self.active or not parts:
            return list(parts)
        values = torch.stack([p.detach().float() for p in parts]) * self.share
        self._all_reduce(values)
        return [p + (v.to(p.dtype) - p).detach() for p, v in zip(parts, values, strict=True)]

    def reduce_(self, t: Tensor, async_op: bool = False):  # type: ignore[no-untyped-def]
        """t ← Σ_r a_r t^r in place (the global value of a locally computed gradient); with
        ``async_op`` the work handle (wait on it before reading t)."""
        if not self.active:
            return None
        t.mul_(self.share)
        return self._all_reduce(t, async_op=async_op)

    def reduce_buckets_(self, t: Tensor) -> list:  # type: ignore[type-arg]
        """:meth:`reduce_` of a flat ``t`` in asynchronous pieces of at most :data:`BUCKET_BYTES`;
        the work handles, to wait on."""
        if not self.active:
            return []
        step = max(1, BUCKET_BYTES // t.element_size())
        return [self.reduce_(piece, async_op=True) for piece in t.split(step)]

    def gramian(self, G: Tensor) -> Tensor:
        """The Gramian of the global representation Jacobian from rank r's G^r: Σ_r a_r² G^r."""
        if not self.active:
            return G
        G = G * self.share**2
        self._all_reduce(G)
        return G

    def gather_columns(self, J: Tensor) -> tuple[Tensor, int, int]:
        """The global (T, Σ_r D_r) matrix whose block r is a_r J^r, and this rank's columns [lo, hi)."""
        if not self.active:
            return J, 0, J.shape[1]
        sizes = torch.zeros(self.world_size, dtype=torch.int64, device=J.device)
        sizes[self.rank] = J.shape[1]
        self._all_reduce(sizes)
        width = int(sizes.max())
        padded = J.new_zeros(J.shape[0], width)
        padded[:, : J.shape[1]] = J * self.share
        blocks = [torch.empty_like(padded) for _ in range(self.world_size)]
        self.sent_bytes += padded.numel() * padded.element_size()
        dist.all_gather(blocks, padded.contiguous())
        full = torch.cat([b[:, : int(s)] for b, s in zip(blocks, sizes.tolist(), strict=True)], dim=1)
        lo = int(sizes[: self.rank].sum())
        return full, lo, lo + J.shape[1]

    def reduce_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Each parameter's ``.grad`` ← Σ_r a_r ``.grad``^r, in buckets of at most
        :data:`BUCKET_BYTES`; a parameter without a gradient on some rank counts as zero there,
        and one without a gradient on every rank keeps none (its optimizer skips it, as alone)."""
        if not self.active:
            return
        params = list(params)
        if not params:
            return
        device = params[0].device
        has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=device)
        self._all_reduce(has, dist.ReduceOp.MAX)
        grads: list[Tensor] = []
        for p, h in zip(params, has.tolist(), strict=True):
            if h > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket]).mul_(self.share)
            self._all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` to every rank (the initial parameters, or the
        batch-norm statistics of a run without --sync-bn, as DDP does)."""
        if not self.active:
            return
        for t in tensors:
            self.sent_bytes += t.numel() * t.element_size()
            dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    # -- checks -----------------------------------------------------------------------------------
    def in_sync(self, tensors: Iterable[Tensor]) -> list[int]:
        """The ranks whose ``tensors`` (parameters, method state) differ bitwise from rank 0's."""
        if not self.active:
            return []
        digest = hashlib.blake2b(digest_size=7)
        for t in tensors:
            digest.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        mine = torch.tensor([int.from_bytes(digest.digest(), "little")], dtype=torch.int64, device=self.device)
        everyone = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine)
        return [r for r, h in enumerate(everyone) if int(h) != int(everyone[0])]


def _buckets(grads: list[Tensor]) -> Iterator[list[Tensor]]:
    """Consecutive groups of ``grads`` of at most :data:`BUCKET_BYTES` each (one larger tensor alone)."""
    bucket: list[Tensor] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or g.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += nbytes
    if bucket:
        yield bucket


def state_tensors(obj: object) -> Iterator[Tensor]:
    """Every tensor in a nested state dict (sorted keys), for :meth:`Comm.in_sync`."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from state_tensors(obj[k])
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from state_tensors(v)
    elif isinstance(obj, int | float | bool):
        yield torch.tensor(float(obj), dtype=torch.float64)


# -- launching ------------------------------------------------------------------------------------
def init_from_env(device: str) -> Comm:
    """Join the process group torchrun describes in the environment (nccl for CUDA devices, gloo
    otherwise) and return this rank's :class:`Comm`; one process when not launched."""
    if not launched():
        return Comm()
    if not dist.is_available():
        raise ConfigError("this torch has no torch.distributed: run without torchrun")
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        minutes = timeout_minutes()
        if cuda:
            rank_gpu(device)
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=minutes))
        except (RuntimeError, ValueError) as e:
            raise RuntimeFault(f"cannot join the torchrun process group: {str(e).splitlines()[0]}") from None
    mark_joined()
    return Comm.current()


def peer_lost(error: RuntimeError, comm: Comm) -> BaseException:
    """A collective's failure because another rank is gone (killed, out of memory, stopped by a
    second signal) as one line; any other RuntimeError unchanged."""
    distributed = isinstance(error, getattr(dist, "DistError", ())) or any(
        s in str(error) for s in ("Connection closed by peer", "Connection reset by peer", "NCCL")
    )
    if not (comm.active and distributed):
        return error
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RuntimeFault(
        f"rank {comm.rank}: another process of the run stopped, so this one cannot go on ({first[:200]}); "
        "the last checkpoint in --out is kept: continue with --resume"
    )


def shutdown() -> None:
    """Leave the process group (at the end of a run, so that no rank waits on a missing peer)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 600.0) -> list[Any]:
    """Run ``fn(comm, *args)`` in ``world_size`` new processes joined in one gloo group (as torchrun
    would, on this machine) and return each rank's result, rank order. ``fn`` must be importable
    (a module-level function). A rank's exception is raised here as a :class:`RuntimeFault`. Its
    collectives wait ``$DENSEMTL_DIST_TIMEOUT_MIN`` for a peer, as torchrun's do (a bad value: one
    line, before any process starts)."""
    minutes = timeout_minutes()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="densemtl-spawn-") as tmp:
        queue = ctx.SimpleQueue()
        init = f"file://{os.path.join(tmp, 'store')}"
        procs = [
            ctx.Process(target=_spawned, args=(fn, rank, world_size, init, queue, args, minutes), daemon=True)
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(results) < world_size:
                if time.monotonic() > deadline:
                    raise RuntimeFault(f"spawned ranks did not finish within {timeout_s:.0f} s")
                if queue.empty():
                    if any(p.exitcode not in (None, 0) for p in procs):
                        codes = [p.exitcode for p in procs]
                        raise RuntimeFault(f"a spawned rank died (exit codes {codes})")
                    time.sleep(0.01)
                    continue
                rank, ok, value = queue.get()
                if not ok:
                    raise RuntimeFault(f"rank {rank} failed: {value}")
                results[rank] = torch.load(io.BytesIO(value), weights_only=True)
        finally:
            for p in procs:
                p.join(timeout=5 if len(results) == world_size else 0.1)
                if p.is_alive():
                    p.kill()
    return [results[r] for r in range(world_size)]


def _spawned(
    fn: Callable[..., Any], rank: int, world_size: int, init: str, queue: Any, args: tuple[Any, ...], minutes: float
) -> None:
    torch.set_num_threads(1)
    timeout = datetime.timedelta(minutes=minutes)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size, timeout=timeout)
    try:
        buf = io.BytesIO()  # bytes, not shared tensors: this process may be gone when they are read
        torch.save(fn(Comm(world_size, rank), *args), buf)
        queue.put((rank, True, buf.getvalue()))
        dist.barrier()
    except BaseException as e:  # reported to the parent, which raises it
        queue.put((rank, False, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


class ShardedBatches(Sampler[list[int]]):
    """Rank ``rank``'s part of each global batch of an epoch (a batch sampler).

    The global batches are those one process would draw: ``order`` (the epoch's shuffled
    indices) cut into batches of ``batch_size``; each is split into ``world_size`` contiguous
    parts as equal as possible. A last global batch with fewer samples than ranks is dropped.
    """

    def __init__(self, order: Sampler[int], batch_size: int, rank: int, world_size: int) -> None:
        self.order, self.batch_size, self.rank, self.world_size = order, batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(iter(self.order))
        for i in range(0, len(indices), self.batch_size):
            batch = indices[i : i + self.batch_size]
            if len(batch) < self.world_size:
                return
            yield [int(j) for j in torch.tensor(batch).tensor_split(self.world_size)[self.rank]]

    def __len__(self) -> int:
        n = len(self.order)  # type: ignore[arg-type]
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)
