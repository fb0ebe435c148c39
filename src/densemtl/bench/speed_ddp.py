"""Cost of a training step across processes: each method's step time against EW's, and the bytes
each rank puts into collectives per step (``densemtl speed --world-size N``).

:func:`measure_speed_ddp` spawns ``world_size`` processes (:func:`densemtl.distributed.spawn`:
gloo on the CPU; on CUDA each rank takes GPU ``rank`` and the ranks talk over nccl) and in each
times what :mod:`densemtl.bench.speed` times in one process: ``zero_grad``, ``engine.step`` with
the rank's :class:`~densemtl.distributed.Comm`, the optimizer step and ``engine.after_step``, for
EW and every requested method, on one seeded model (batch norm synchronised, as ``train`` does
with several processes) and one synthetic **global** batch of ``batch_size`` samples split into
contiguous shards, one per rank. The warm-up and the interleaved, rotating repeats are those of
the one-process benchmark; every timed unit starts at a barrier.

A step's time is the slowest rank's (the max over ranks of each repeat, then the median over the
repeats); its bytes are rank 0's ``comm.sent_bytes`` delta over the unit, divided by its steps:
the losses' values (every mode), plus the Gramian (T×T) or the gathered representation rows
(representation mode), or the per-task gradients (T×P, parameters and gramian modes), plus the
gradients DDP averages. Batch-norm statistics synchronised inside the model's forward are not
in it; their size per forward and backward pass is reported beside (``sync_bn_bytes``).
"""

from __future__ import annotations

import copy
import datetime
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from densemtl.bench.speed import (
    Runner,
    _message,
    _ratio,
    _sync,
    build_template,
    plan_rows,
    run_unit,
)
from densemtl.bench.speed_setup import (
    bench_optimizer,
    check_data_args,
    check_settings,
    make_batch,
    make_engine,
    make_precision,
    method_names,
    method_spec,
)
from densemtl.bench.targets import BASELINE
from densemtl.distributed import Comm, spawn
from densemtl.errors import ConfigError
from densemtl.launch import timeout_minutes
from densemtl.models.base import MultiTaskModel
from densemtl.models.sync_bn import GlobalBatchNorm2d, convert_sync_bn
from densemtl.plugins import load_pending
from densemtl.report.progress import progress as progress_bar
from densemtl.training.builders import build_method, resolve_device

__all__ = ["MAX_WORLD_SIZE", "check_world_size", "measure_speed_ddp", "rank_speed"]

#: the most processes ``--world-size`` spawns on one machine
MAX_WORLD_SIZE = 64


def check_world_size(world_size: Any, batch_size: Any, device: str) -> None:
    """A one-line ConfigError unless ``world_size`` processes can share a global batch of
    ``batch_size`` on ``device`` (one GPU per rank on CUDA)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= MAX_WORLD_SIZE:
        raise ConfigError(f"--world-size must be an integer from 1 to {MAX_WORLD_SIZE}, got {world_size!r}")
    if world_size == 1:
        return
    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.device_count() < world_size:
        raise ConfigError(
            f"--world-size {world_size} with --device {device}: {torch.cuda.device_count()} GPU(s) visible, "
            "one per process needed"
        )
    if isinstance(batch_size, int) and batch_size < world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch, shared by the ranks: it must be at least "
            f"--world-size {world_size}"
        )


def measure_speed_ddp(
    methods: Sequence[str] | None,
    *,
    world_size: int = 2,
    arch: str = "segnet",
    arch_args: dict[str, Any] | None = None,
    size: tuple[int, int] | str = (96, 128),
    batch_size: int = 8,
    tasks: Sequence[str] | None = None,
    data_args: Mapping[str, Any] | None = None,
    num_classes: int = 7,
    recompute_every: int = 1,
    grad_mode: str | None = None,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    device: str = "cpu",
    amp: str = "off",
    sync_bn: bool = True,
    progress: bool = False,
    timeout_s: float = 3600.0,
) -> list[dict[str, Any]]:
    """Time a training step of EW and each method in ``world_size`` processes; one row each.

    Arguments as :func:`~densemtl.bench.speed.measure_speed` (``batch_size`` is the global batch);
    no naive-loop row and no memory column. Rows hold ``method``, ``mode``, ``status`` and, when
    ``ok``: ``step_ms`` (median over repeats of the slowest rank), ``min_ms``, ``times_ms``,
    ``rank0_step_ms``, ``ratio_to_ew``, ``ratio_to_ew_min``, ``bytes_per_step`` (rank 0) and
    ``bytes_ratio_to_ew``; every row also ``sync_bn_bytes`` (per forward + backward, not counted).
    """
    check_world_size(world_size, batch_size, device)
    timeout_minutes()  # a bad $DENSEMTL_DIST_TIMEOUT_MIN: one line before anything is built
    hw, task_tuple = check_settings(size, batch_size, tasks, recompute_every, grad_mode, warmup, repeats, data_args)
    names, strict = method_names(methods)
    dev = resolve_device(device)
    make_precision(amp, dev)
    knobs = check_data_args(data_args)
    # Rows that cannot run are found here, once, on the CPU, before any process starts.
    template = build_template(arch, arch_args, task_tuple, num_classes, seed, torch.device("cpu"))
    plan, rows = plan_rows(names, strict, template, task_tuple, grad_mode, recompute_every, seed)
    del template
    job = {
        "names": [name for name, _, _ in plan],
        "arch": arch,
        "arch_args": arch_args,
        "size": hw,
        "batch_size": batch_size,
        "tasks": task_tuple,
        "data_args": knobs,
        "num_classes": num_classes,
        "recompute_every": recompute_every,
        "grad_mode": grad_mode,
        "warmup": warmup,
        "repeats": repeats,
        "seed": seed,
        "device": str(dev),
        "amp": amp,
        "sync_bn": sync_bn,
        "progress": progress,
    }
    with tempfile.TemporaryDirectory(prefix="densemtl-speed-") as tmp:
        if dev.type == "cuda":
            job["nccl_init"] = f"file://{os.path.join(tmp, 'nccl')}"
        ranks = spawn(rank_speed, world_size, job, timeout_s=timeout_s)
    failed = next((r["error"] for r in ranks if r.get("error")), None)
    if failed:
        raise ConfigError(failed)
    rows.update(_combine(ranks))
    ordered = [rows[n] for n in (BASELINE, *names)]
    return _summarise(ordered, ranks[0]["sync_bn_bytes"])


def rank_speed(comm: Comm, job: dict[str, Any]) -> dict[str, Any]:
    """One rank's part of :func:`measure_speed_ddp` (run in a spawned process): its rows, step
    times and bytes sent per step; ``error`` when the EW baseline cannot step."""
    load_pending()  # its parent's plugins ($DENSEMTL_IMPORTS) and the entry points, before any lookup
    dev = torch.device(job["device"])
    if dev.type == "cuda":
        dev = torch.device("cuda", comm.rank)
        torch.cuda.set_device(dev)
        _join_nccl(comm, job["nccl_init"], dev)
    tasks = tuple(job["tasks"])
    n = job["batch_size"]
    whole = make_batch(job["size"], n, tasks, job["num_classes"], job["seed"], dev, job["data_args"])
    mine = torch.arange(n).tensor_split(comm.world_size)[comm.rank].to(dev)
    batch = {k: v.index_select(0, mine) for k, v in whole.items()}
    template: nn.Module = build_template(job["arch"], job["arch_args"], tasks, job["num_classes"], job["seed"], dev)
    if job["sync_bn"]:
        template = convert_sync_bn(template, dev)
    comm.broadcast_([*template.parameters(), *template.buffers()])  # as training starts: rank 0's weights
    assert isinstance(template, MultiTaskModel)

    def before() -> None:
        comm.set_batch(len(mine), dev)

    out: dict[str, Any] = {"rows": {}, "times": {}, "sent": {}, "sync_bn_bytes": _sync_bn_bytes(template)}
    runners: list[Runner] = []
    for name in job["names"]:
        runner, err = None, None
        try:
            base, knobs = method_spec(name)
            method = build_method(base, len(tasks), job["seed"], knobs)
            model = copy.deepcopy(template)
            precision = make_precision(job["amp"], dev)
            mode = None if name == BASELINE else job["grad_mode"]
            k = 1 if name == BASELINE else job["recompute_every"]
            engine = make_engine(model, method, tasks, mode, k, precision, comm)
            optimizer = bench_optimizer(model, method)
            runner = Runner(name, engine.mode, k, model, optimizer, engine.step, engine.after_step, precision=precision)
            run_unit(runner, batch, job["warmup"], before)
        except Exception as e:  # noqa: BLE001 - one failing method must not sink the table
            err = _message(e)
        if comm.any(err is not None, dev):  # every rank drops the row, or none
            if name == BASELINE:
                return {"error": f"the EW baseline step failed on these settings: {err or 'on another rank'}"}
            out["rows"][name] = {
                "method": name,
                "mode": None,
                "status": "error",
                "error": f"step: {err or 'another rank'}",
            }
            continue
        assert runner is not None
        runners.append(runner)
        out["rows"][name] = {
            "method": name,
            "mode": runner.mode,
            "status": "ok",
            "recompute_every": runner.recompute_every,
        }
        out["sent"][name] = []
    return _time_rank(comm, runners, batch, job, dev, before, out)


def _time_rank(
    comm: Comm,
    runners: list[Runner],
    batch: dict[str, Tensor],
    job: dict[str, Any],
    dev: torch.device,
    before: Callable[[], None],
    out: dict[str, Any],
) -> dict[str, Any]:
    """Interleaved timing, as in one process; each unit starts at a barrier and counts its bytes."""
    gc.collect()
    active = list(runners)
    show = job["progress"] and comm.is_main
    repeats = job["repeats"]
    bar = progress_bar(total=repeats * len(active), desc="timing", prefix="densemtl speed", unit="step", enabled=show)
    for r in range(repeats):
        shift = r % max(len(active), 1)
        for runner in active[shift:] + active[:shift]:
            bar.set_postfix_str(f"repeat {r + 1}/{repeats} {runner.name}")
            steps = runner.recompute_every
            err = None
            comm.barrier()
            sent = comm.sent_bytes
            try:
                _sync(dev)
                start = time.perf_counter()
                run_unit(runner, batch, steps, before)
                _sync(dev)
                runner.times.append((time.perf_counter() - start) / steps)
                out["sent"][runner.name].append((comm.sent_bytes - sent) / steps)
            except Exception as e:  # noqa: BLE001
                err = _message(e)
            if comm.any(err is not None, dev):
                if runner.name == BASELINE:
                    return {"error": f"the EW baseline step failed on these settings: {err or 'on another rank'}"}
                out["rows"][runner.name] = {
                    "method": runner.name, "mode": None, "status": "error", "error": err or "another rank failed",
                }  # fmt: skip
            bar.update(1)
        active = [a for a in active if out["rows"][a.name]["status"] == "ok"]
    bar.close()
    for runner in active:
        out["times"][runner.name] = runner.times
    return out


def _join_nccl(comm: Comm, init: str, dev: torch.device) -> None:
    """Swap the spawned gloo group for an nccl one over the same ranks (GPU tensors, as torchrun
    on CUDA gives ``train``)."""
    dist.destroy_process_group()
    timeout = datetime.timedelta(minutes=timeout_minutes())
    dist.init_process_group(
        "nccl", init_method=init, rank=comm.rank, world_size=comm.world_size, device_id=dev, timeout=timeout
    )


def _sync_bn_bytes(model: nn.Module) -> int | None:
    """Bytes one forward and one backward pass put into batch-norm all-reduces on the CPU
    (2C + 1 float64 sums per layer each way); None when torch's SyncBatchNorm (CUDA) does it."""
    layers = [m for m in model.modules() if isinstance(m, GlobalBatchNorm2d)]
    if any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return None
    return sum(2 * 8 * (2 * m.num_features + 1) for m in layers)


def _combine(ranks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rank 0's rows, with each repeat's time the slowest rank's and rank 0's bytes per step."""
    rows: dict[str, dict[str, Any]] = {}
    first = ranks[0]
    for name, row in first["rows"].items():
        row = dict(row)
        if row["status"] == "ok":
            per_rank = [r["times"][name] for r in ranks]
            slowest = [max(ts) for ts in zip(*per_rank, strict=True)]
            sent = first["sent"][name]
            row.update(
                {
                    "step_ms": statistics.median(slowest) * 1e3,
                    "min_ms": min(slowest) * 1e3,
                    "times_ms": [round(t * 1e3, 3) for t in slowest],
                    "rank0_step_ms": statistics.median(first["times"][name]) * 1e3,
                    "bytes_per_step": round(statistics.median(sent)),
                }
            )
        rows[name] = row
    return rows


def _summarise(rows: list[dict[str, Any]], sync_bn_bytes: int | None) -> list[dict[str, Any]]:
    ew = rows[0]
    for row in rows:
        row["sync_bn_bytes"] = sync_bn_bytes
        if row["status"] != "ok":
            row.update({"step_ms": None, "ratio_to_ew": None, "ratio_to_ew_min": None, "bytes_per_step": None})
            row["bytes_ratio_to_ew"] = None
            continue
        row["ratio_to_ew"] = _ratio(row["step_ms"], ew["step_ms"])
        row["ratio_to_ew_min"] = _ratio(row["min_ms"], ew["min_ms"])
        row["bytes_ratio_to_ew"] = _ratio(row["bytes_per_step"], ew["bytes_per_step"])
    return rows
