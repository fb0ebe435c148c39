"""``densemtl train``: parses the flags; :func:`densemtl.training.config.resolve_config` resolves
them over the YAML file and the demo preset (no arguments at all = the demo)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from densemtl.cli.spec_flags import SpecHelpFormatter, add_spec_flags, given_values
from densemtl.training.config import DEMO


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a multi-task model (no arguments: the demo)",
        argument_default=argparse.SUPPRESS,
        formatter_class=SpecHelpFormatter,
    )
    add_spec_flags(p)  # every config key's flag, by section (densemtl.training.config_spec)
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from densemtl.distributed import init_from_env, peer_lost, shutdown
    from densemtl.errors import ConfigError
    from densemtl.models import count_parameters
    from densemtl.paths import fresh_run_dir
    from densemtl.training.config import build_config, load_yaml, resolve_config, resume_config
    from densemtl.training.inert import check_batch_size, check_settings
    from densemtl.training.schedule import resume_note
    from densemtl.training.trainer import Trainer

    values = given_values(args)
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
