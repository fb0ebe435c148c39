"""``densemtl bench``: every (arch, method, seed) cell plus single-task baselines, and the Δm% report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from densemtl.bench.executors import EXECUTORS, SLURM_TIME_MIN
from densemtl.cli.spec_flags import SpecHelpFormatter, add_spec_flags, given_values
from densemtl.errors import ConfigError

if TYPE_CHECKING:
    from densemtl.bench.executors import Executor
    from densemtl.bench.grid import BenchGrid


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="compare methods × architectures over seeds, with Δm%% against single-task baselines",
        description="Compare methods × architectures over seeds, with Δm% against single-task baselines. "
        "Stopped (Ctrl-C, SIGTERM, kill -9) or failed, rerun the same command: finished runs are kept, "
        "unfinished ones continue from their last checkpoint, and a run whose files are corrupt runs again. "
        "One bench process at a time per --out directory.",
        argument_default=argparse.SUPPRESS,
        formatter_class=SpecHelpFormatter,
    )
    p.add_argument("--grid", metavar="FILE", help="YAML grid file (the same keys as the flags); flags override it")
    p.add_argument(
        "--archs",
        help="comma-separated architectures (default segnet); on the synthetic data each at the demo's size "
        "(SegNet ×0.25, 4 stages; others at their defaults) unless --arch-arg or the grid's arch_args say otherwise",
    )
    p.add_argument("--methods", help="comma-separated balancing methods (default ew)")
    p.add_argument("--seeds", type=int, help="number of seeds per cell: 0..N-1 (default 1)")
    p.add_argument("--jobs", type=int, help="runs in parallel processes (default 1)")
    p.add_argument(
        "--val-fraction", type=float, help="share of the train split carved out for model selection (default 0.2)"
    )
    add_spec_flags(p, bench=True)  # the config keys a bench shares between its cells
    p.add_argument("--out", metavar="DIR", help="bench directory (default: a fresh one under ./benches)")
    add_executor_flags(p)
    p.set_defaults(func=run)


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """Where the runs go: not grid keys (the same grid runs anywhere, and its tables do not depend on where)."""
    g = p.add_argument_group(
        "where the runs go",
        "every run trains into its own directory under --out (shared storage on a cluster), so a bench "
        "stopped under one executor continues under any other, with the same tables",
    )
    g.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="local: --jobs processes on this machine (default); ray: one Ray task per run; "
        "slurm: one Slurm job per run (a job array, through submitit)",
    )
    g.add_argument("--cpus-per-job", type=int, metavar="N", help="ray, slurm: CPUs (and torch threads) per run (1)")
    g.add_argument("--gpus-per-job", type=float, metavar="G", help="ray, slurm: GPUs per run (0; Ray takes fractions)")
    g.add_argument(
        "--ray-address", metavar="ADDR", help="ray: the cluster to submit to (default: start a local Ray instance)"
    )
    g.add_argument("--slurm-partition", metavar="NAME", help="slurm: the partition (default: the cluster's)")
    g.add_argument(
        "--slurm-time-min", type=int, metavar="MIN", help=f"slurm: time limit of each run's job ({SLURM_TIME_MIN})"
    )
    g.add_argument("--slurm-arg", action="append", metavar="KEY=VALUE", help="slurm: an sbatch option (repeatable)")
    g.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local"),
        help="slurm: where submitit sends the jobs; local runs the jobs as local processes through submitit, "
        "for testing (default slurm)",
    )


def executor_from(args: argparse.Namespace, out: Path, grid: BenchGrid) -> Executor:
    """The executor the flags ask for (checked, its package imported; nothing written)."""
    from densemtl.bench.executors import make_executor
    from densemtl.training.config import build_config

    extra = None
    if hasattr(args, "slurm_arg"):
        extra = {}
        for item in args.slurm_arg:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--slurm-arg {item!r} must be key=value, e.g. account=myproject")
            extra[key.strip().replace("-", "_")] = value
    slurm = {
        "cluster": getattr(args, "slurm_cluster", None),
        "partition": getattr(args, "slurm_partition", None),
        "time_min": getattr(args, "slurm_time_min", None),
        "extra": extra,
    }
    return make_executor(
        getattr(args, "executor", "local"),
        out,
        jobs=grid.jobs,
        cpus=getattr(args, "cpus_per_job", None),
        gpus=getattr(args, "gpus_per_job", None),
        ray_address=getattr(args, "ray_address", None),
        slurm=slurm,
        device=build_config(grid.base).device,
    )


def gather(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the bench flags given on the command line."""
    values = {
        k: getattr(args, k) for k in ("archs", "methods", "seeds", "jobs", "val_fraction", "out") if hasattr(args, k)
    }
    values.update(given_values(args, bench=True))
    # --import / --trust-imports (plugins): in every run's config, so its worker imports them too
    if hasattr(args, "imports") or hasattr(args, "trust_imports"):
        from densemtl.cli.imports import command_imports

        values["imports"] = command_imports(args)
    return values


def check_bench_settings(grid: BenchGrid, values: dict[str, Any], grid_file: str | None) -> None:
    """The shared settings checked as ``train`` checks its own: a flag that does nothing in the
    combination given is refused, a grid file's key warned of (:mod:`densemtl.training.inert`)."""
    import sys

    from densemtl.training.config import build_config, load_yaml
    from densemtl.training.inert import check_settings

    layer = load_yaml(grid_file) if grid_file is not None else None
    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    check_settings(build_config(grid.base), values, layer, str(grid_file), warn=warn)


def run(args: argparse.Namespace) -> int:
    from densemtl.bench.grid import resolve_grid
    from densemtl.bench.runner import run_bench

    values = gather(args)
    grid = resolve_grid(values, yaml=getattr(args, "grid", None))
    check_bench_settings(grid, values, getattr(args, "grid", None))
    if grid.out:
        out = Path(grid.out)
    else:
        out = Path("benches") / f"{time.strftime('%Y%m%d-%H%M%S')}-{grid.base.get('dataset', 'synthetic')}"
    summary = run_bench(grid, out, executor=executor_from(args, out, grid))
    best = [e for e in summary if e.get("rank") == 1]
    for e in best:
        spread = f"± {e['delta_m'][1]:.2f}" if e.get("n", 1) > 1 else "± n/a, one seed"
        print(f"  best on {e['arch']}: {e['method']} (Δm% {e['delta_m'][0]:+.2f} {spread})")
    return 0
