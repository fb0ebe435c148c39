"""``densemtl bench``: every (arch, method, seed) cell plus single-task baselines, and the Δm% report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from densemtl.cli.train_cmd import FLAGS, add_knob_flags, given_flags

#: train flags that a bench sets per cell (or does not support): not offered by ``bench``
EXCLUDED = {
    "--arch",
    "--method",
    "--seed",
    "--peer-arch",
    "--mimicry-weight",
    "--mimicry-temperature",
    "--alpha-warmup-epochs",
}
BENCH_FLAGS = [(flag, kw) for flag, kw in FLAGS if flag not in EXCLUDED]
#: KEY=VALUE flags of a bench, knobs shared by every cell (one architecture's own go in the grid file).
BENCH_KNOB_FLAGS = [
    ("--data-arg", "data_args", "a dataset knob (repeatable)"),
    ("--arch-arg", "arch_args", "a knob of every architecture (repeatable)"),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="compare methods × architectures over seeds, with Δm% against single-task baselines",
        description="Compare methods × architectures over seeds, with Δm% against single-task baselines. "
        "Stopped (Ctrl-C, SIGTERM, kill -9) or failed, rerun the same command: finished runs are kept, "
        "unfinished ones continue from their last checkpoint, and a run whose files are corrupt runs again. "
        "One bench process at a time per --out directory.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--grid", metavar="FILE", help="YAML grid file (the same keys as the flags); flags override it")
    p.add_argument("--archs", help="comma-separated architectures (default segnet)")
    p.add_argument("--methods", help="comma-separated balancing methods (default ew)")
    p.add_argument("--seeds", type=int, help="number of seeds per cell: 0..N-1 (default 1)")
    p.add_argument("--jobs", type=int, help="runs in parallel processes (default 1)")
    p.add_argument(
        "--val-fraction", type=float, help="share of the train split carved out for model selection (default 0.2)"
    )
    for flag, kw in BENCH_FLAGS:
        p.add_argument(flag, **kw)
    p.add_argument("--augment", action="store_true", help="MTAN random scale-crop and flip")
    add_knob_flags(p, BENCH_KNOB_FLAGS)
    p.add_argument("--out", metavar="DIR", help="bench directory (default: a fresh one under ./benches)")
    p.set_defaults(func=run)


def gather(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the bench flags given on the command line."""
    flags = ["--archs", "--methods", "--seeds", "--jobs", "--val-fraction", "--out", *(f for f, _ in BENCH_FLAGS)]
    return given_flags(args, flags, BENCH_KNOB_FLAGS)


def run(args: argparse.Namespace) -> int:
    from densemtl.bench.grid import resolve_grid
    from densemtl.bench.runner import run_bench

    grid = resolve_grid(gather(args), yaml=getattr(args, "grid", None))
    if grid.out:
        out = Path(grid.out)
    else:
        out = Path("benches") / f"{time.strftime('%Y%m%d-%H%M%S')}-{grid.base.get('dataset', 'synthetic')}"
    summary = run_bench(grid, out)
    best = [e for e in summary if e.get("rank") == 1]
    for e in best:
        print(f"  best on {e['arch']}: {e['method']} (Δm% {e['delta_m'][0]:+.2f} ± {e['delta_m'][1]:.2f})")
    return 0
