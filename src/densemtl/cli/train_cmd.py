"""``densemtl train``: parses the flags; :func:`densemtl.training.config.resolve_config` resolves
them over the YAML file and the demo preset (no arguments at all = the demo)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from densemtl.training.config import DEMO, parse_kv, parse_size, parse_task_args, parse_tasks

FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--dataset", {"help": "synthetic (default), nyuv2, cityscapes, nyud or pascal_context"}),
    (
        "--data-root",
        {"help": "root of a dataset in the MTAN layout ROOT/{train,val}/{image,label,depth,normal}"},
    ),
    ("--size", {"help": "HxW to train at (default: the dataset's own)"}),
    ("--tasks", {"help": "comma-separated tasks to train, a subset of the dataset's (default: all of them)"}),
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
    ("--lr", {"type": float, "help": "learning rate (default 2e-3)"}),
    ("--weight-decay", {"type": float}),
    (
        "--optimizer",
        {"choices": ["adam", "adamw", "sgd"], "help": "adam (default), adamw (decoupled weight decay) or sgd"},
    ),
    ("--momentum", {"type": float, "help": "sgd's momentum (default 0.9)"}),
    (
        "--lr-schedule",
        {
            "choices": ["step", "cosine", "poly", "none"],
            "help": "learning-rate schedule, taken per epoch: step (default: x--lr-gamma every --lr-step epochs), "
            "cosine (towards 0 over --epochs), poly (DeepLab's (1 - epoch/epochs)^0.9) or none (constant)",
        },
    ),
    (
        "--lr-step",
        {
            "type": int,
            "help": "step schedule: multiply the learning rate by --lr-gamma every N epochs (default: 2/3 of "
            "--epochs, so it halves once; the synthetic demo preset: 10 of its 15); config.yaml holds the value",
        },
    ),
    ("--lr-gamma", {"type": float, "help": "step schedule: the factor of each decay (default 0.5)"}),
    (
        "--warmup-epochs",
        {"type": int, "help": "ramp the learning rate up linearly over the first N epochs (default 0)"},
    ),
    ("--seed", {"type": int}),
    ("--device", {"help": "cpu, cuda, cuda:N or auto"}),
    ("--workers", {"type": int, "help": "data loader processes"}),
    (
        "--checkpoint-every",
        {"type": int, "metavar": "N", "help": "also write checkpoints/last.pt every N steps within an epoch (0 = off)"},
    ),
    (
        "--skip-nonfinite",
        {
            "type": int,
            "metavar": "N",
            "help": "skip up to N steps with a NaN or inf loss or update (counted in metrics.jsonl) "
            "instead of stopping the run",
        },
    ),
    (
        "--amp",
        {
            "choices": ["off", "bf16", "fp16"],
            "help": "mixed precision: autocast the forward pass to bf16 or fp16 (fp16 with a gradient "
            "scaler); every method's aggregation stays float32 (default: off)",
        },
    ),
    (
        "--sync-bn",
        {
            "action": argparse.BooleanOptionalAction,
            "help": "under torchrun: batch-norm statistics over the global batch (default: on with several processes)",
        },
    ),
    (
        "--diagnostics-every",
        {"type": int, "help": "sample task-gradient cosines and per-block balance every K steps (0 = off)"},
    ),
]


#: Repeatable KEY=VALUE flags: (flag, config key, help).
KNOB_FLAGS: list[tuple[str, str, str]] = [
    ("--data-arg", "data_args", "a dataset knob (repeatable)"),
    ("--task-arg", "task_args", "a task knob as TASK:KEY=VALUE, e.g. edge:pos_weight=0.95 (repeatable)"),
    ("--arch-arg", "arch_args", "an architecture knob (repeatable)"),
    ("--method-arg", "method_args", "a method knob (repeatable)"),
    (
        "--peer-arg",
        "peer_args",
        "MDML: a peer architecture knob, over those it inherits from --arch-arg (all of them for the "
        "same architecture, those it takes for another)",
    ),
]


def add_knob_flags(p: argparse.ArgumentParser, flags: list[tuple[str, str, str]]) -> None:
    for flag, _, help_text in flags:
        p.add_argument(flag, action="append", metavar="KEY=VALUE", help=help_text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a multi-task model (no arguments: the demo)", argument_default=argparse.SUPPRESS
    )
    for flag, kw in FLAGS:
        p.add_argument(flag, **kw)
    p.add_argument("--augment", action="store_true", help="MTAN random scale-crop and flip")
    add_knob_flags(p, KNOB_FLAGS)
    p.add_argument("--config", metavar="FILE", help="YAML config; flags override it")
    p.add_argument("--out", metavar="RUN", help="run directory (default: a fresh one under ./runs)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out exactly, from its last checkpoint (an epoch end, --checkpoint-every, "
        "or a SIGINT/SIGTERM); a larger --epochs extends it, its learning-rate schedule kept as planned (one "
        "line says so; see --replan-schedule)",
    )
    p.add_argument(
        "--replan-schedule",
        action="store_true",
        help="with --resume: plan the learning-rate schedule for the new --epochs as a fresh run of them would "
        "(lr_step 2/3 of them unless --lr-step is given, the synthetic demo preset's 10; cosine and poly end at "
        "the new last epoch; one line prints the plan); by default the schedule is kept as the run planned it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", action="store_true", help="also write RUN/tensorboard/ event files")
    p.set_defaults(func=run)


def given_flags(args: argparse.Namespace, flags: list[str], knobs: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The config values of the flags given on the command line (argparse leaves the others unset:
    ``SUPPRESS`` defaults): each of ``flags`` as its key, the KEY=VALUE ``knobs`` as mappings."""
    values: dict[str, Any] = {}
    for flag in flags:
        key = flag[2:].replace("-", "_")
        if hasattr(args, key):
            values[key] = getattr(args, key)
    if isinstance(values.get("size"), str):
        values["size"] = parse_size(values["size"])
    if isinstance(values.get("tasks"), str):
        values["tasks"] = parse_tasks(values["tasks"], "--tasks")
    for flag in ("--augment", "--tensorboard"):
        if getattr(args, flag[2:], False):
            values[flag[2:]] = True
    for flag, key, _ in knobs:
        attr = flag[2:].replace("-", "_")
        if hasattr(args, attr):
            parse = parse_task_args if key == "task_args" else parse_kv
            values[key] = parse(getattr(args, attr), flag)
    return values


def run(args: argparse.Namespace) -> int:
    from densemtl.distributed import init_from_env, peer_lost, shutdown
    from densemtl.errors import ConfigError
    from densemtl.models import count_parameters
    from densemtl.paths import fresh_run_dir
    from densemtl.training.config import build_config, load_yaml, resolve_config, resume_config
    from densemtl.training.inert import check_batch_size, check_settings
    from densemtl.training.schedule import resume_note
    from densemtl.training.trainer import Trainer

    values = given_flags(args, [flag for flag, _ in FLAGS], KNOB_FLAGS)
    # --import / --trust-imports (plugins): added to the config file's or resumed run's imports
    if hasattr(args, "imports") or hasattr(args, "trust_imports"):
        from densemtl.cli.imports import command_imports

        values["imports"] = command_imports(args)
    yaml_path = getattr(args, "config", None)
    first = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run
    resume = getattr(args, "resume", False)
    if resume:
        if not hasattr(args, "out"):
            raise ConfigError("--resume needs --out RUN, the run to continue")
        replan = getattr(args, "replan_schedule", False)
        cfg = check_settings(
            resume_config(Path(args.out), values, yaml=yaml_path, replan=replan), values, warn=_warn if first else None
        )
        out = Path(args.out)
        if first:
            print(resume_note(build_config(load_yaml(out / "config.yaml")), cfg, replan))
    elif getattr(args, "replan_schedule", False):
        raise ConfigError("--replan-schedule applies to --resume only; a fresh run plans its schedule for its --epochs")
    else:
        cfg = resolve_config(values, yaml=yaml_path)
        layer = load_yaml(yaml_path) if yaml_path is not None else None
        cfg = check_settings(cfg, values, layer, str(yaml_path), warn=_warn if first else None)
        out = Path(args.out) if hasattr(args, "out") else fresh_run_dir(cfg)
        if first and cfg.dataset == "synthetic" and any(getattr(cfg, k) == v for k, v in DEMO.items()):
            print(
                "densemtl: small synthetic settings (size {}x{}, {} train / {} val images); flags override them".format(
                    *cfg.size or (0, 0), cfg.n_train, cfg.n_val
                )
            )
    comm = init_from_env(cfg.device)
    try:
        out = Path(str(comm.broadcast_object(str(out))))  # rank 0's fresh directory name
        say = print if comm.is_main else _silent
        trainer = Trainer(cfg, out, resume=resume, progress=not getattr(args, "quiet", False), log=say, comm=comm)
        check_batch_size(cfg.batch_size, len(trainer.train_set), values)  # nothing is written before run()
        ranks = f" in {comm.world_size} processes" if comm.active else ""
        say(
            f"densemtl: training {cfg.arch} ({count_parameters(trainer.model)['total']:,} parameters) "
            f"with {cfg.method} on {cfg.dataset} "
            f"({', '.join(trainer.tasks)}) for {cfg.epochs} epochs on {trainer.device}{ranks}; run: {out}"
        )
        summary = trainer.run()
    except RuntimeError as e:
        raise peer_lost(e, comm) from None
    finally:
        shutdown()
    say(f"densemtl: done in {summary['time_s']:.0f}s; run directory: {out}")
    say(f"  summary {out / 'summary.json'}, plots {out / 'plots'}, checkpoint {out / 'checkpoints' / 'last.pt'}")
    return 0


def _warn(line: str) -> None:
    """A warning line on stderr."""
    sys.stderr.write(line + "\n")


def _silent(*args: Any, **kwargs: Any) -> None:
    """The console of a rank other than 0: it prints nothing (rank 0 speaks for the run)."""
