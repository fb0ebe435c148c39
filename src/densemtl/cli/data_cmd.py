"""``densemtl data synth`` (write a synthetic dataset in the MTAN layout) and ``data check``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="write or check datasets on disk")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="write synthetic scenes as ROOT/{train,val}/{image,label,depth,normal}/i.npy")
    s.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    s.add_argument("--n-train", type=int, default=64)
    s.add_argument("--n-val", type=int, default=16)
    s.add_argument("--size", default="96x128", help="HxW")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_synth)
    c = dsub.add_parser("check", help="validate a dataset in the MTAN layout (reads every file)")
    c.add_argument("--dataset", default="nyuv2", help="nyuv2 or cityscapes")
    c.add_argument("--data-root", required=True)
    c.add_argument("--num-classes", type=int)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from densemtl.data.writer import synthesize
    from densemtl.errors import ConfigError
    from densemtl.training.config import parse_size

    size = parse_size(args.size)
    if args.n_train < 1 or args.n_val < 1:
        raise ConfigError("--n-train and --n-val must be at least 1")
    synthesize(args.out, args.n_train, args.n_val, size, args.seed)
    print(f"densemtl: wrote {args.n_train} train and {args.n_val} val scenes at {size[0]}x{size[1]} to {args.out}")
    print(f"  train on it with: densemtl train --dataset nyuv2 --data-root {args.out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Open both splits (folders, counts, headers) and read every file's values: labels in
    -1..num_classes-1, finite images, unit normals, depth with valid pixels. The first bad file
    is a one-line error; depth readings that load as invalid are a warning."""
    from densemtl import data
    from densemtl.errors import ConfigError

    if args.dataset not in ("nyuv2", "cityscapes"):
        data.DATASETS.get(args.dataset)  # unknown name -> ConfigError with a did-you-mean
        raise ConfigError(f"data check reads datasets in the MTAN layout (nyuv2, cityscapes), not {args.dataset!r}")
    opened = [
        data.create(args.dataset, split, root=args.data_root, num_classes=args.num_classes)
        for split in ("train", "val")
    ]
    for ds in opened:
        counts = ds.scan(progress=not args.quiet)  # type: ignore[attr-defined]
        print(
            f"{ds.split}: {len(ds)} samples, size {ds.size}, tasks {', '.join(ds.tasks)}, "  # type: ignore[attr-defined]
            f"{ds.num_classes} classes: ok"
        )
        if counts["depth_unusable"]:
            print(
                f"  warning: {counts['depth_unusable']} depth files hold negative, NaN or infinite readings "
                "(read as invalid pixels)"
            )
        if counts["depth_empty"] == counts["samples"]:
            print("  warning: no depth file has a valid pixel: the depth task would learn nothing")
        elif counts["depth_empty"]:
            print(f"  warning: {counts['depth_empty']} depth files have no valid pixel")
    return 0
