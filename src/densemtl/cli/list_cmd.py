"""``densemtl list``: datasets, tasks, architectures (with their knobs), timm backbones and methods (with kind and
knobs)."""

from __future__ import annotations

import argparse
import inspect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list datasets, tasks (with their knobs), architectures and balancing methods")
    p.add_argument("--verbose", "-v", action="store_true", help="also knobs and parameter counts")
    p.set_defaults(func=run)


def _knobs(registry, name: str, skip: set[str]) -> str:  # noqa: ANN001
    parts = []
    for key, param in registry.knobs(name).items():
        if key in skip:
            continue
        default = "" if param.default is inspect.Parameter.empty else f"={param.default!r}"
        parts.append(f"{key}{default}")
    return ", ".join(parts)


def task_lines() -> list[str]:
    """One line per task: its name and its knobs with their defaults (what ``--task-arg`` sets)."""
    from densemtl import tasks

    out = []
    for name in tasks.available():
        knobs = ", ".join(f"{k}={v!r}" for k, v in tasks.task_knobs(name).items())
        out.append(f"  {name:12s} {knobs or '-'}")
    return out


def run(args: argparse.Namespace) -> int:
    from densemtl import data, methods, models
    from densemtl.training.builders import STANDARD_DATA_KEYS, build_method

    print("datasets:      " + ", ".join(data.available()))
    print("tasks (knobs: --task-arg TASK:KEY=VALUE):")
    print("\n".join(task_lines()))
    print("architectures: " + ", ".join(models.available()))
    print("methods:       " + ", ".join(methods.available()))
    from densemtl.balancing import LIBMTL_NAMES

    print("               (also LibMTL's names: " + ", ".join(LIBMTL_NAMES) + ")")
    print("schemes:       " + ", ".join(scheme_lines()))
    if not args.verbose:
        return 0
    print("\narchitectures (parameters for NYUv2: 13 classes, depth, normals):")
    from densemtl.errors import ConfigError

    for name in models.available():
        try:
            model = models.create(name)
        except ConfigError as exc:  # e.g. a timm-only architecture without timm installed
            print(f"  {name:12s} not built: {exc}")
            print(f"  {'':12s} knobs: {_knobs(models.MODELS, name, {'task_channels'})}")
            continue
        counts = models.count_parameters(model)
        print(f"  {name:12s} shared {counts['shared']:>11,}  total {counts['total']:>11,}")
        print(f"  {'':12s} knobs: {_knobs(models.MODELS, name, {'task_channels'})}")
        modes = getattr(model, "modes_note", None) or (  # a model may say which modes and why
            "loss, representation, gramian, parameters"
            if model.has_representation
            else "loss, gramian, parameters (no single shared representation)"
        )
        print(f"  {'':12s} grad modes: {modes}")
    print_timm_backbones()
    print("\ndatasets (knobs beyond split, root, size, augment, seed, n, num_classes: --data-arg):")
    for name in data.available():
        print(f"  {name:12s} {_knobs(data.DATASETS, name, set(STANDARD_DATA_KEYS)) or '-'}")
    print("\nmethods (kind, gradient modes, knobs):")
    for name in methods.available():
        req = build_method(name, 3, 0).requirements
        kind = "weighting" if req.uses_losses else "optimizer" if req.optimizer == "sgd" else "gradient"
        print(f"  {name:12s} {kind:9s} {'/'.join(req.modes):33s} {_knobs(methods.METHODS, name, {'num_tasks'})}")
    return 0


def scheme_lines() -> list[str]:
    """Each training scheme with its knobs (``--scheme-arg KEY=VALUE``, each a config key with its default)."""
    from densemtl.cli.spec_flags import scheme_knob_text
    from densemtl.training.schemes import SCHEMES

    return [f"{name} ({scheme_knob_text(name) or 'no knobs'})" for name in SCHEMES.available()]


def print_timm_backbones(count: bool = True) -> None:
    """The timm section of ``list -v``: the syntax, the installed timm, the tested families with
    the backbone parameters of one model each (the last feature map, as hps and padnet use it)."""
    import torch

    from densemtl.models.timm_backbone import FAMILIES, TIMM_ARCHS, TimmFeatures

    try:
        import timm
    except ImportError:
        timm = None
    syntax = f"--arch {'|'.join(TIMM_ARCHS)} --arch-arg backbone=timm:<name>"
    if timm is None:
        print(f"\ntimm backbones ({syntax}): timm is not installed; pip install 'densemtl[timm]'")
        count = False
    else:
        print(f"\ntimm backbones ({syntax}; timm {timm.__version__}, {len(timm.list_models())} models):")
    for family, example, more, stride in FAMILIES:
        params = ""
        if count:
            with torch.device("meta"):  # counts only: no memory, no initialisation
                net = TimmFeatures("timm:" + example, "hps", levels=1, output_stride=8)
            params = f"{sum(p.numel() for p in net.parameters()):>11,}"
        print(f"  {family:12s} {example:28s} {params:>11s}  output stride {stride}; also {more}")
    print(
        "  (parameters: the backbone alone, shared by every task; any timm model with features_only=True "
        "should work: see docs/architectures/timm.md)"
    )
