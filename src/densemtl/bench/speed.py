"""Cost of a training step under each balancing method, as a ratio to EW on the same model and batch.

Every method (EW included) gets its own copy of one initial model, its own ``Engine`` and the
optimizer training would give it (Adam; MAO: SGD on the shared parameters, AdamW on the rest).
A timed step is what training does per batch: ``zero_grad``, ``engine.step``, the optimizer
step and ``engine.after_step`` (FAMO's re-evaluation of the batch).
After warm-up, the steps are timed interleaved: each repeat times one unit of every method in
turn (the order rotates between repeats), so that a slowdown of the machine hits all methods
alike; the reported time is the median over the repeats. A unit is ``recompute_every``
consecutive steps (divided by that number), so an amortised method is charged its full
recomputation once per unit. Peak memory comes from one extra unit per method run inside a
``MemoryProbe`` (see ``densemtl.bench.memory``), never from a timed one.

The row ``naive-loop`` is the reference the engine is measured against: T separate backward
passes, each followed by flattening every shared parameter's gradient into a new tensor, and the
mean of the rows copied back into ``.grad`` parameter by parameter, as LibMTL does.

The settings, the batch, the method specs, the optimizers and the machine description live in
:mod:`densemtl.bench.speed_setup`; their public names are re-exported here.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from densemtl import models as model_registry
from densemtl.balancing.base import BalancingMethod
from densemtl.bench.memory import MemoryProbe
from densemtl.bench.speed_setup import (
    DATASET,
    DEFAULT_ARCH_ARGS,
    bench_optimizer,
    check_data_args,
    check_settings,
    dataset_tasks,
    machine_info,
    make_batch,
    make_engine,
    make_precision,
    method_names,
    method_spec,
)
from densemtl.bench.targets import BASELINE, NAIVE, assess
from densemtl.engine import Engine
from densemtl.engine.precision import Precision
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.report.progress import progress as progress_bar
from densemtl.tasks import as_task_set, task_channels
from densemtl.training.builders import build_method, resolve_device

__all__ = [
    "DATASET",
    "DEFAULT_ARCH_ARGS",
    "MEMORY_NOTE",
    "NaiveLoop",
    "Runner",
    "check_data_args",
    "dataset_tasks",
    "machine_info",
    "make_batch",
    "measure_speed",
    "method_spec",
]

MEMORY_NOTE = (
    "peak bytes of live tensors allocated since the method's model copy was made (parameters, "
    "gradients, Adam state, engine buffers, activations), during one unit after warm-up; "
    "CPU: PyTorch CPU allocator events from torch.profiler(profile_memory=True); "
    "CUDA: torch.cuda.max_memory_allocated"
)


class NaiveLoop:
    """LibMTL's per-task gradients: T ``backward`` passes, each flattened into a new tensor.

    The shared gradients are set to ``None`` between passes (``zero_grad``), the rows go into a
    freshly allocated (T, P) matrix, and their mean is copied back into each shared parameter's
    ``.grad`` slice by slice (``.clone()``), as ``AbsWeighting._compute_grad`` / ``_reset_grad``
    do. Task heads accumulate their own task's gradient over the passes.
    """

    mode = "parameters"

    def __init__(self, model: MultiTaskModel, tasks: tuple[str, ...], precision: Precision | None = None) -> None:
        self.model = model
        self.tasks = tasks
        self.task_set = as_task_set(tasks)  # built once, as a run's
        self.precision = precision or Precision()
        self.shared = model.shared_parameters()
        self.numel = sum(p.numel() for p in self.shared)

    def step(self, batch: dict[str, Tensor]) -> None:
        """Forward, T backward passes, mean of the flattened rows written back into ``.grad``."""
        self.model.zero_grad(set_to_none=True)
        amp = self.precision
        with amp.autocast():
            preds = self.model(batch["image"])
        if amp.enabled:  # float32 losses, and fp16's scaled backward, as the engine does
            preds = {k: v.float() for k, v in preds.items()}
        losses = self.model.task_losses(preds, batch, self.task_set)
        if amp.scaler is not None:
            losses = {k: v * amp.scale for k, v in losses.items()}
        T = len(self.tasks)
        first = self.shared[0]
        grads = torch.zeros(T, self.numel, dtype=first.dtype, device=first.device)
        for t, task in enumerate(self.tasks):
            losses[task].backward(retain_graph=t < T - 1)
            grads[t] = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in self.shared]
            )
            for p in self.shared:
                p.grad = None
        update = grads.mean(dim=0)
        offset = 0
        for p in self.shared:
            n = p.numel()
            p.grad = update[offset : offset + n].view_as(p).clone()
            offset += n


@dataclass
class Runner:
    """One row being measured: its model copy, optimizer, step function and timings."""

    name: str
    mode: str
    recompute_every: int
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    step: Callable[[dict[str, Tensor]], object]
    after_step: Callable[[dict[str, Tensor]], object] = lambda batch: None
    times: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    precision: Precision | None = None


def run_unit(runner: Runner, batch: dict[str, Tensor], steps: int, before: Callable[[], object] | None = None) -> None:
    """``steps`` training steps of ``runner`` on ``batch`` (``before`` first in each: a rank's
    ``comm.set_batch``); with mixed precision the optimizer steps through the scaler, as training does."""
    for _ in range(steps):
        if before is not None:
            before()
        runner.optimizer.zero_grad(set_to_none=True)
        runner.step(batch)
        if runner.precision is None:
            runner.optimizer.step()
        else:
            runner.precision.step(runner.optimizer)
            runner.precision.update()
        runner.after_step(batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _message(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


def measure_speed(
    methods: Sequence[str] | None,
    *,
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
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Time one training step (``engine.step`` + Adam + ``engine.after_step``) of each method and
    of EW; one row each. ``tasks`` None: every task of the synthetic dataset with knobs
    ``data_args`` (``{"tasks": "seg,depth,normal,edge,saliency"}`` renders five).

    ``methods=None`` means every registered method; settings a method cannot use (a
    ``grad_mode`` or ``recompute_every``) then give an ``n/a`` row, whereas for methods named
    explicitly they raise ``ConfigError``. EW always runs as the baseline in mode ``loss`` and
    ``naive-loop`` is always added. A method that fails to build or to step gives an ``error`` row.
    Rows hold ``method``, ``mode``, ``status`` and, when ``ok``: ``step_ms`` (median),
    ``ratio_to_ew``, ``ratio_to_naive`` (gradient modes, not amortised), ``mem_ratio``, ``peak_mb``,
    ``recompute_every``, ``times_ms``, ``min_ms`` with ``ratio_to_ew_min`` (fastest over fastest, a
    check on a noisy machine) and ``target`` with ``met``, this project's own regression bounds
    (:mod:`densemtl.bench.targets`, judged on the medians; the CLI does not print them).
    ``amp`` bf16 or fp16: every row's forward under autocast and its optimizer step through fp16's
    gradient scaler, as ``train --amp`` runs them (the naive loop's too).
    """
    hw, task_tuple = check_settings(size, batch_size, tasks, recompute_every, grad_mode, warmup, repeats, data_args)
    names, strict = method_names(methods)
    dev = resolve_device(device)
    make_precision(amp, dev)  # a bad --amp is refused before anything is built
    batch = make_batch(hw, batch_size, task_tuple, num_classes, seed, dev, check_data_args(data_args))
    template = build_template(arch, arch_args, task_tuple, num_classes, seed, dev)
    plan, rows = plan_rows(names, strict, template, task_tuple, grad_mode, recompute_every, seed)
    plan.append((NAIVE, None, 1))

    runners = _set_up(plan, template, batch, task_tuple, grad_mode, warmup, recompute_every, rows, progress, amp)
    _time(runners, batch, recompute_every, repeats, dev, rows, progress)
    ordered = [rows[n] for n in (BASELINE, *names, NAIVE)]
    return _summarise(ordered)


def build_template(
    arch: str,
    arch_args: dict[str, Any] | None,
    tasks: tuple[str, ...],
    num_classes: int,
    seed: int,
    device: torch.device,
) -> MultiTaskModel:
    """The initial model every row copies (seeded; ``arch_args`` None: the benchmark's default knobs)."""
    knobs = dict(DEFAULT_ARCH_ARGS.get(arch, {}) if arch_args is None else arch_args)
    torch.manual_seed(seed)
    return model_registry.create(arch, task_channels(tasks, num_classes), **knobs).to(device).train()


Plan = list[tuple[str, BalancingMethod | None, int]]


def plan_rows(
    names: Sequence[str],
    strict: bool,
    template: MultiTaskModel,
    tasks: tuple[str, ...],
    grad_mode: str | None,
    recompute_every: int,
    seed: int,
) -> tuple[Plan, dict[str, dict[str, Any]]]:
    """Which rows run (EW first), and the rows that cannot, found before anything is timed: a
    method that cannot be built is an ``error`` row; one that cannot use ``grad_mode`` or
    ``recompute_every`` an ``n/a`` row, or a ConfigError when it was named (``strict``)."""
    plan: Plan = [(BASELINE, build_method(BASELINE, len(tasks), seed), 1)]
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            base, knobs = method_spec(name)
            method = build_method(base, len(tasks), seed, knobs)
        except Exception as e:  # noqa: BLE001 - a method that cannot be built is reported, not fatal
            rows[name] = {"method": name, "mode": None, "status": "error", "error": f"construction: {_message(e)}"}
            continue
        try:
            Engine(template, method, tasks, mode=grad_mode, recompute_every=recompute_every)
        except ConfigError as e:
            if strict:
                raise
            rows[name] = {"method": name, "mode": None, "status": "n/a", "error": str(e)}
            continue
        plan.append((name, method, recompute_every))
    return plan, rows


def _set_up(
    plan: list[tuple[str, BalancingMethod | None, int]],
    template: MultiTaskModel,
    batch: dict[str, Tensor],
    tasks: tuple[str, ...],
    grad_mode: str | None,
    warmup: int,
    unit: int,
    rows: dict[str, dict[str, Any]],
    progress: bool,
    amp: str = "off",
) -> list[Runner]:
    """Per row: a fresh model copy, engine and Adam, warm-up steps, and one unit under a memory probe."""
    runners: list[Runner] = []
    device = next(template.parameters()).device
    bar = progress_bar(total=len(plan), desc="warm-up", prefix="densemtl speed", unit="method", enabled=progress)
    for name, method, k in plan:
        bar.set_postfix_str(name)
        try:
            with MemoryProbe(device) as probe:
                model = copy.deepcopy(template)
                if method is None:
                    naive = NaiveLoop(model, tasks, make_precision(amp, device))
                    runner = Runner(name, naive.mode, 1, model, bench_optimizer(model, None), naive.step)
                    runner.precision = naive.precision if naive.precision.enabled else None
                else:
                    mode = None if name == BASELINE else grad_mode
                    precision = make_precision(amp, device)
                    engine = make_engine(model, method, tasks, mode, k, precision)
                    optimizer = bench_optimizer(model, method)
                    runner = Runner(name, engine.mode, k, model, optimizer, engine.step, engine.after_step)
                    runner.precision = precision
                run_unit(runner, batch, warmup)
                with probe.window():
                    run_unit(runner, batch, unit)
            runner.peak_bytes = probe.peak_bytes
            runners.append(runner)
            rows[name] = {"method": name, "mode": runner.mode, "status": "ok"}
        except Exception as e:  # noqa: BLE001 - one failing method must not sink the table
            if name == BASELINE:
                raise ConfigError(f"the EW baseline step failed on these settings: {_message(e)}") from e
            rows[name] = {"method": name, "mode": None, "status": "error", "error": f"step: {_message(e)}"}
        bar.update(1)
    bar.close()
    return runners


def _time(
    runners: list[Runner],
    batch: dict[str, Tensor],
    unit: int,
    repeats: int,
    device: torch.device,
    rows: dict[str, dict[str, Any]],
    progress: bool,
) -> None:
    """Interleaved timing: each repeat times one unit of every runner, in a rotating order."""
    gc.collect()
    active = list(runners)
    bar = progress_bar(
        total=repeats * len(active), desc="timing", prefix="densemtl speed", unit="step", enabled=progress
    )
    for r in range(repeats):
        shift = r % max(len(active), 1)
        for runner in active[shift:] + active[:shift]:
            bar.set_postfix_str(f"repeat {r + 1}/{repeats} {runner.name}")
            try:
                _sync(device)
                start = time.perf_counter()
                run_unit(runner, batch, unit)
                _sync(device)
                runner.times.append((time.perf_counter() - start) / unit)
            except Exception as e:  # noqa: BLE001
                if runner.name == BASELINE:
                    raise ConfigError(f"the EW baseline step failed on these settings: {_message(e)}") from e
                rows[runner.name] = {"method": runner.name, "mode": None, "status": "error", "error": _message(e)}
            bar.update(1)
        active = [r_ for r_ in active if rows[r_.name]["status"] == "ok"]
    bar.close()
    for runner in active:
        rows[runner.name].update(
            {
                "step_ms": statistics.median(runner.times) * 1e3,
                "min_ms": min(runner.times) * 1e3,
                "times_ms": [round(t * 1e3, 3) for t in runner.times],
                "recompute_every": runner.recompute_every,
                "peak_mb": None if runner.peak_bytes is None else runner.peak_bytes / 2**20,
            }
        )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios to EW and to the naive loop, and the project's regression bounds for each row."""
    by_name = {r["method"]: r for r in rows}
    ew, naive = by_name[BASELINE], by_name.get(NAIVE, {})
    for row in rows:
        if row["status"] != "ok":
            row.update({"step_ms": None, "ratio_to_ew": None, "ratio_to_ew_min": None, "mem_ratio": None})
            continue
        row["ratio_to_ew"] = _ratio(row["step_ms"], ew["step_ms"])
        row["ratio_to_ew_min"] = _ratio(row["min_ms"], ew["min_ms"])
        row["mem_ratio"] = _ratio(row["peak_mb"], ew["peak_mb"])
        exact = row["mode"] != "loss" and row["recompute_every"] == 1 and row["method"] != NAIVE
        row["ratio_to_naive"] = _ratio(row["step_ms"], naive.get("step_ms")) if exact else None
        assess(row)
    return rows
