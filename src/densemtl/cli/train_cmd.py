"""``densemtl train``: flags > YAML config > defaults; no arguments at all = the demo."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from densemtl.training.config import (
    DEMO_OVERRIDES,
    TrainConfig,
    build_config,
    load_yaml,
    parse_kv,
    parse_size,
)

FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--dataset", {"help": "synthetic (default), nyuv2 or cityscapes"}),
    (
        "--data-root",
        {"help": "root of a dataset in the MTAN layout ROOT/{train,val}/{image,label,depth,normal}"},
    ),
    ("--size", {"help": "HxW to train at (default: the dataset's own)"}),
    ("--n-train", {"type": int, "help": "number of training samples (synthetic size, or a subset)"}),
    ("--n-val", {"type": int, "help": "number of validation samples"}),
    ("--num-classes", {"type": int, "help": "cityscapes: 7 (default) or 19"}),
    ("--arch", {"help": "architecture (densemtl list)"}),
    ("--method", {"help": "balancing method (densemtl list)"}),
    (
        "--grad-mode",
        {
            "help": "how per-task gradients are taken: representation, gramian or parameters "
            "(default: the method's choice)"
        },
    ),
    ("--recompute-every", {"type": int, "help": "reuse a Gramian method's task weights for k steps"}),
    ("--peer-arch", {"help": "MDML: train a peer network of this architecture by mutual learning"}),
    ("--mimicry-weight", {"type": float, "help": "MDML: weight alpha of the mimicry losses (default 1)"}),
    ("--mimicry-temperature", {"type": float, "help": "MDML: softmax temperature of the segmentation KL"}),
    ("--alpha-warmup-epochs", {"type": int, "help": "MDML: ramp alpha linearly from 0 over N epochs"}),
    ("--epochs", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--lr", {"type": float, "help": "Adam learning rate"}),
    ("--weight-decay", {"type": float}),
    ("--lr-step", {"type": int, "help": "halve (lr_gamma) the learning rate every N epochs"}),
    ("--lr-gamma", {"type": float}),
    ("--seed", {"type": int}),
    ("--device", {"help": "cpu, cuda, cuda:N or auto"}),
    ("--workers", {"type": int, "help": "data loader processes"}),
    (
        "--diagnostics-every",
        {"type": int, "help": "sample task-gradient cosines and per-block balance every K steps (0 = off)"},
    ),
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a multi-task model (no arguments: the demo)", argument_default=argparse.SUPPRESS
    )
    for flag, kw in FLAGS:
        p.add_argument(flag, **kw)
    p.add_argument("--augment", action="store_true", help="MTAN random scale-crop and flip")
    p.add_argument(
        "--arch-arg", action="append", metavar="KEY=VALUE", help="an architecture knob (repeatable)"
    )
    p.add_argument("--method-arg", action="append", metavar="KEY=VALUE", help="a method knob (repeatable)")
    p.add_argument("--peer-arg", action="append", metavar="KEY=VALUE", help="MDML: a peer architecture knob")
    p.add_argument("--config", metavar="FILE", help="YAML config; flags override it")
    p.add_argument("--out", metavar="RUN", help="run directory (default: a fresh one under ./runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", action="store_true", help="also write RUN/tensorboard/ event files")
    p.set_defaults(func=run)


def yaml_then_flags(path: str | None, args: argparse.Namespace, flags: list[str]) -> dict[str, Any]:
    """The YAML file's keys (dashes read as underscores), then every one of ``flags`` given on
    the command line over them (argparse leaves flags not given unset: ``SUPPRESS`` defaults)."""
    values: dict[str, Any] = {}
    if path:
        values.update({str(k).replace("-", "_"): v for k, v in load_yaml(path).items()})
    for flag in flags:
        key = flag[2:].replace("-", "_")
        if hasattr(args, key):
            values[key] = getattr(args, key)
    return values


def gather(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the user gave: the YAML file first, then flags over it."""
    values = yaml_then_flags(getattr(args, "config", None), args, [flag for flag, _ in FLAGS])
    if "size" in values and isinstance(values["size"], str):
        values["size"] = parse_size(values["size"])
    if getattr(args, "augment", False):
        values["augment"] = True
    if getattr(args, "tensorboard", False):
        values["tensorboard"] = True
    for attr, key, flag in (
        ("arch_arg", "arch_args", "--arch-arg"),
        ("method_arg", "method_args", "--method-arg"),
        ("peer_arg", "peer_args", "--peer-arg"),
    ):
        if hasattr(args, attr):
            merged = dict(values.get(key) or {})
            merged.update(parse_kv(getattr(args, attr), flag))
            values[key] = merged
    return values


def with_demo_defaults(values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Fill the demo's small sizes where the user left them unset on the synthetic data."""
    if values.get("dataset", "synthetic") != "synthetic":
        return values, False
    out = dict(values)
    used = False
    for key, value in DEMO_OVERRIDES.items():
        if key == "arch_args" and (values.get("arch", "segnet") != "segnet" or "arch_args" in values):
            continue
        if key not in values:
            out[key] = value
            used = True
    return out, used


def fresh_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{cfg.dataset}-{cfg.arch}-{cfg.method}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def run(args: argparse.Namespace) -> int:
    from densemtl.training.trainer import Trainer, resume_config

    values = gather(args)
    resume = getattr(args, "resume", False)
    if resume:
        if not hasattr(args, "out"):
            from densemtl.errors import ConfigError

            raise ConfigError("--resume needs --out RUN, the run to continue")
        cfg = resume_config(Path(args.out), values)
        out = Path(args.out)
    else:
        values, demo = with_demo_defaults(values)
        cfg = build_config(values)
        out = Path(args.out) if hasattr(args, "out") else fresh_run_dir(cfg)
        if demo:
            print(
                "densemtl: small synthetic settings (size {}x{}, {} train / {} val images); "
                "flags override them".format(*cfg.size or (0, 0), cfg.n_train, cfg.n_val)
            )
    trainer = Trainer(cfg, out, resume=resume, progress=not getattr(args, "quiet", False), log=print)
    print(
        f"densemtl: training {cfg.arch} with {cfg.method} on {cfg.dataset} "
        f"({', '.join(trainer.tasks)}) for {cfg.epochs} epochs on {trainer.device}; run: {out}"
    )
    summary = trainer.run()
    print(f"densemtl: done in {summary['time_s']:.0f}s; run directory: {out}")
    print(
        f"  summary {out / 'summary.json'}, plots {out / 'plots'}, checkpoint {out / 'checkpoints' / 'last.pt'}"
    )
    return 0
