"""``densemtl list``: datasets, architectures (with their knobs) and methods (with kind and knobs)."""

from __future__ import annotations

import argparse
import inspect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list datasets, architectures and balancing methods")
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


def run(args: argparse.Namespace) -> int:
    from densemtl import data, methods, models
    from densemtl.training.builders import STANDARD_DATA_KEYS, build_method

    print("datasets:      " + ", ".join(data.available()))
    print("architectures: " + ", ".join(models.available()))
    print("methods:       " + ", ".join(methods.available()))
    if not args.verbose:
        return 0
    print("\narchitectures (parameters for NYUv2: 13 classes, depth, normals):")
    for name in models.available():
        model = models.create(name)
        counts = models.count_parameters(model)
        print(f"  {name:12s} shared {counts['shared']:>11,}  total {counts['total']:>11,}")
        print(f"  {'':12s} knobs: {_knobs(models.MODELS, name, {'task_channels'})}")
    print("\ndatasets (knobs beyond split, root, size, augment, seed, n, num_classes: --data-arg):")
    for name in data.available():
        print(f"  {name:12s} {_knobs(data.DATASETS, name, set(STANDARD_DATA_KEYS)) or '-'}")
    print("\nmethods (kind, gradient modes, knobs):")
    for name in methods.available():
        req = build_method(name, 3, 0).requirements
        kind = "weighting" if req.uses_losses else "optimizer" if req.optimizer == "sgd" else "gradient"
        print(f"  {name:12s} {kind:9s} {'/'.join(req.modes):33s} {_knobs(methods.METHODS, name, {'num_tasks'})}")
    return 0
