"""``densemtl speed``: step time and peak memory of each method as ratios to EW, and the mode used."""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import Any

from densemtl.errors import ConfigError
from densemtl.paths import check_output_file, write_bytes

#: what the --world-size table's columns are, recorded with its JSON
DDP_NOTES = {
    "timing": "per repeat the slowest rank's unit time (each unit starts at a barrier); median over repeats",
    "bytes": "rank 0's comm.sent_bytes per step: losses, Gramian or gathered rows or per-task gradients, and "
    "the gradients DDP averages; synchronised batch-norm statistics excluded (sync_bn_bytes per pass)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed",
        help="time a training step of each method against EW (ratios, memory, gradient mode)",
        description="Times one training step (engine + Adam, and the batch's re-evaluation for a method that "
        "asks for it, like FAMO) of each method and of EW on the same model and synthetic batch, interleaved, "
        "and reports median step time, ratio to EW, peak memory ratio to EW and the gradient mode; a naive "
        "per-task backward loop (as in LibMTL) is timed as a reference.",
    )
    p.add_argument(
        "--methods",
        help="comma-separated methods (default: all registered); EW is always timed; "
        "NAME:KEY=VALUE[:KEY=VALUE] times a method with knobs, e.g. famo:update=next_batch",
    )
    p.add_argument("--arch", default="segnet", help="architecture (default: segnet, width 0.25 unless --arch-arg)")
    p.add_argument("--arch-arg", action="append", metavar="KEY=VALUE", help="an architecture knob (repeatable)")
    p.add_argument("--size", default="96x128", help="HxW of the synthetic images (default: 96x128)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
    p.add_argument(
        "--tasks",
        help="comma-separated tasks, a subset of the synthetic dataset's (default: all of them; seg,depth,normal "
        "unless --data-arg tasks=... asks for more)",
    )
    p.add_argument(
        "--data-arg",
        action="append",
        metavar="KEY=VALUE",
        help="a synthetic dataset knob, as for train (repeatable), e.g. tasks=seg,depth,normal,edge,saliency",
    )
    p.add_argument("--recompute-every", type=int, default=1, help="reuse Gramian weightings' weights for k steps")
    p.add_argument(
        "--grad-mode", help="representation, gramian or parameters (alias jacobian) (default: each method's own)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed steps per method, interleaved (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="time the step in N processes sharing the global --batch-size (gloo on the CPU; nccl, one GPU per "
        "process, with --device cuda) and report the bytes each rank communicates per step (default: 1)",
    )
    p.add_argument(
        "--amp",
        default="off",
        choices=("off", "bf16", "fp16"),
        help="mixed precision of the forward, as train --amp (fp16 needs CUDA; default: off)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results and settings as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


#: What each gradient mode costs per step, said under a table that has it.
MODE_NOTES = {
    "loss": "loss: one backward pass, EW's cost",
    "representation": "representation: T backward passes through the heads, one through the shared network",
    "parameters": "parameters: T backward passes through the whole network",
    "gramian": "gramian: one backward pass vectorised over the T tasks (the Gramian without the T rows)",
}


def choices_note(rows: list[dict[str, Any]]) -> str:
    """What the modes in ``rows`` cost, and which choices pay less per step when a row pays T passes."""
    modes = [m for m in MODE_NOTES if any(r.get("mode") == m and r["status"] == "ok" for r in rows)]
    lines = ["modes: " + "; ".join(MODE_NOTES[m] for m in modes)] if modes else []
    exact = sorted(
        {
            r["method"]
            for r in rows
            if r["status"] == "ok"
            and r["mode"] in ("parameters", "gramian")
            and r["method"] != "naive-loop"
            and r.get("recompute_every", 1) == 1
        }
    )
    if exact:
        lines.append(
            f"to pay less per step for {', '.join(exact)}: --grad-mode representation (a method of the Gramian, "
            "on a model with a shared representation) or --recompute-every K (the weights reused for K steps); "
            "docs/speed.md measures both"
        )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: method, mode, median step ms, ratio to EW and to the naive loop, memory;
    EW is the baseline of the ratios and the naive loop the reference."""
    header = ("method", "mode", "step ms", "x EW", "min x EW", "x naive", "mem x EW", "peak MB", "")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        if r["status"] != "ok":
            lines.append((r["method"], r["status"], r.get("error") or ""))
            continue
        mode = r["mode"] + (f" /{r['recompute_every']}" if r.get("recompute_every", 1) > 1 else "")
        verdict = {"ew": "baseline", "naive-loop": "reference (LibMTL's loop)"}.get(r["method"], "")
        lines.append(
            (
                r["method"],
                mode,
                _fmt(r["step_ms"], ".1f"),
                _fmt(r["ratio_to_ew"], ".2f"),
                _fmt(r.get("ratio_to_ew_min"), ".2f"),
                _fmt(r.get("ratio_to_naive"), ".2f"),
                _fmt(r["mem_ratio"], ".2f"),
                _fmt(r.get("peak_mb"), ".1f"),
                verdict,
            )
        )
    full = [ln for ln in lines if len(ln) == len(header)]
    widths = [max(len(ln[i]) for ln in full) for i in range(len(header))]
    out = []
    for ln in lines:
        if len(ln) != len(header):  # error rows: method, status, message
            out.append(f"{ln[0]:<{widths[0]}}  {ln[1]:<{widths[1]}}  {ln[2]}")
            continue
        cells = [c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(ln, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _bytes(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def format_ddp_table(rows: list[dict[str, Any]]) -> str:
    """The table of ``--world-size N``: method, mode, step time (the slowest rank's), ratios to EW,
    rank 0's bytes per step and their ratio to EW's."""
    header = ("method", "mode", "step ms (max over ranks)", "x EW", "min x EW", "bytes/step, rank 0", "bytes x EW")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        if r["status"] != "ok":
            lines.append((r["method"], r["status"], r.get("error") or ""))
            continue
        mode = r["mode"] + (f" /{r['recompute_every']}" if r.get("recompute_every", 1) > 1 else "")
        lines.append(
            (
                r["method"],
                mode,
                _fmt(r["step_ms"], ".1f"),
                _fmt(r["ratio_to_ew"], ".2f"),
                _fmt(r.get("ratio_to_ew_min"), ".2f"),
                _bytes(r["bytes_per_step"]),
                _fmt(r["bytes_ratio_to_ew"], ".2f"),
            )
        )
    full = [ln for ln in lines if len(ln) == len(header)]
    widths = [max(len(ln[i]) for ln in full) for i in range(len(header))]
    out = []
    for ln in lines:
        if len(ln) != len(header):
            out.append(f"{ln[0]:<{widths[0]}}  {ln[1]:<{widths[1]}}  {ln[2]}")
            continue
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(ln, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _load() -> float | None:
    """The 1-minute load average (how busy the machine was), where the OS reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run(args: argparse.Namespace) -> int:
    from densemtl.bench.speed import MEMORY_NOTE, measure_speed
    from densemtl.bench.speed_ddp import check_world_size, measure_speed_ddp
    from densemtl.bench.speed_setup import DEFAULT_ARCH_ARGS, dataset_tasks, machine_info
    from densemtl.report.progress import progress_every
    from densemtl.training.config import parse_kv, parse_size

    progress_every()  # a bad $DENSEMTL_PROGRESS_EVERY: one line before anything runs
    check_world_size(args.world_size, args.batch_size, args.device)
    size = parse_size(args.size)
    methods = [m for m in args.methods.split(",") if m.strip()] if args.methods is not None else None
    if methods is not None and not methods:
        raise ConfigError("--methods is empty; give comma-separated method names (densemtl list)")
    data_args = parse_kv(args.data_arg, "--data-arg") if args.data_arg else {}
    tasks = (
        dataset_tasks(data_args) if args.tasks is None else tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    )
    arch_args = parse_kv(args.arch_arg, "--arch-arg") if args.arch_arg else None
    out = Path(args.json) if args.json is not None else None
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--json {args.json}: directory {out.parent} does not exist")
    if out is not None:
        check_output_file(out, "--json", args.overwrite)
    load_before = _load()
    ddp = args.world_size > 1
    measure: Any = functools.partial(measure_speed_ddp, world_size=args.world_size) if ddp else measure_speed
    rows = measure(
        methods,
        arch=args.arch,
        arch_args=arch_args,
        size=size,
        batch_size=args.batch_size,
        tasks=tasks,
        data_args=data_args,
        recompute_every=args.recompute_every,
        grad_mode=args.grad_mode,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        progress=not args.quiet,
    )
    settings = {
        "arch": args.arch,
        "arch_args": arch_args if arch_args is not None else DEFAULT_ARCH_ARGS.get(args.arch, {}),
        "size": list(size),
        "batch_size": args.batch_size,
        "tasks": list(tasks),
        "data_args": data_args,
        "recompute_every": args.recompute_every,
        "grad_mode": args.grad_mode,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
        "step": "optimizer.zero_grad + engine.step + Adam.step + engine.after_step; median over interleaved repeats",
        "amp": args.amp,
        "world_size": args.world_size,
        **(DDP_NOTES if ddp else {"memory": MEMORY_NOTE}),
        "load_avg_1min": [load_before, _load()],  # other work on the machine, before and after
        **machine_info(args.device),
    }
    m = settings
    if ddp:
        backend = "nccl" if str(m["device"]).startswith("cuda") else "gloo, 1 torch thread each"
        m["torch_threads"] = 1 if backend.startswith("gloo") else m["torch_threads"]
        where = f"{args.world_size} processes ({backend}), global "
    else:
        where = ""
    amp = f", amp {args.amp}" if args.amp != "off" else ""
    print(
        f"densemtl speed: {args.arch} {m['arch_args']} {size[0]}x{size[1]} {where}batch {args.batch_size}{amp}, "
        f"tasks {','.join(tasks)}, "
        f"{args.repeats} repeats after {args.warmup} warm-up, on {m['device']} ({m['device_name']}, "
        f"{m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    )
    if ddp:
        bn = rows[0].get("sync_bn_bytes")
        extra = f"; sync-BN adds {_bytes(bn)} B per forward+backward, not counted" if bn else ""
        print(f"step time: the slowest rank's; bytes: what rank 0 puts into collectives per step{extra}")
    print(format_ddp_table(rows) if ddp else format_table(rows))
    note = choices_note(rows)
    if note:
        print(note)
    if out is not None:
        write_bytes(out, (json.dumps({"results": rows, "settings": settings}, indent=2) + "\n").encode())
        print(f"densemtl: results written to {out}")
    return 0
