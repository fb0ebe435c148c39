"""``densemtl data synth`` (write synthetic scenes in the MTAN, NYUD-MT or PASCAL-Context layout),
``data convert`` (raw NYUv2 or Cityscapes frames to the MTAN layout) and ``data check``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="write or check datasets on disk")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("synth", help="write synthetic scenes in a real dataset's layout (MTAN's by default)")
    s.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="mtan",
        help="mtan: ROOT/{train,val}/{image,label,depth,normal}/i.npy (--dataset nyuv2); nyud: NYUD-MT "
        "(--dataset nyud); pascal_context: PASCAL-MT (--dataset pascal_context)",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    s.add_argument("--n-train", type=int, default=64)
    s.add_argument("--n-val", type=int, default=16)
    s.add_argument("--size", default="96x128", help="HxW")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_synth)
    v = dsub.add_parser(
        "convert",
        help="convert raw NYUv2 or Cityscapes frames to the MTAN layout (docs/datasets/convert.md)",
        description="Convert raw frames to ROOT/{train,val}/{image,label,depth,normal}/i.npy, the layout "
        "'train --dataset nyuv2|cityscapes --data-root ROOT' reads. NYUv2: RAW/{train,val}/<frame>/ with "
        "rgb.png, depth_mm.png (or depth_filled_mm.png, depth_raw_mm.png; millimetres) and label13.png (or "
        "label40.png and map40to13.txt). Cityscapes: RAW/leftImg8bit, RAW/gtFine and optionally RAW/disparity, "
        "as distributed; labels are written as 7 categories and 19 classes (train --num-classes chooses).",
    )
    v.add_argument("dataset", choices=CONVERTIBLE, help="the raw frames' dataset")
    v.add_argument("raw", metavar="RAW", help="the folder of raw frames")
    v.add_argument("--out", required=True, metavar="ROOT", help="a new or empty folder to write the dataset to")
    v.add_argument("--size", help="HxW to store the frames at (default: nyuv2 288x384, cityscapes 128x256)")
    v.add_argument(
        "--overwrite", action="store_true", help="replace ROOT if it holds an earlier conversion (train/, val/)"
    )
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=run_convert)
    c = dsub.add_parser("check", help="validate a dataset on disk (reads every file)")
    c.add_argument("--dataset", default="nyuv2", help="nyuv2, cityscapes, nyud or pascal_context")
    c.add_argument("--data-root", required=True)
    c.add_argument("--num-classes", type=int)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_check)


LAYOUTS = ("mtan", "nyud", "pascal_context")
CONVERTIBLE = ("nyuv2", "cityscapes")


def run_convert(args: argparse.Namespace) -> int:
    """Convert every raw frame (one progress bar), then say what was written and how to train on it."""
    from densemtl.data.convert import convert
    from densemtl.report.progress import progress
    from densemtl.training.config import parse_size

    size = parse_size(args.size) if args.size else None

    def wrap(items: list, total: int) -> object:
        return progress(items, total=total, desc="convert", prefix="densemtl data convert", unit="frame",
                        enabled=not args.quiet)  # fmt: skip

    meta = convert(args.dataset, args.raw, args.out, size=size, overwrite=args.overwrite, wrap=wrap)
    h, w = meta["size"]
    counts = meta["samples"]
    print(
        f"densemtl: wrote {counts['train']} train and {counts['val']} val {args.dataset} frames at {h}x{w} "
        f"to {args.out}"
    )
    total = counts["train"] + counts["val"]
    if meta["no_depth"] == total:
        print("  warning: no frame has a valid depth pixel (no disparity given): the depth task would learn nothing")
    elif meta["no_depth"]:
        print(f"  warning: {meta['no_depth']} of {total} frames have no valid depth pixel")
    extra = "  (7 categories; add --num-classes 19 for the 19 classes)"
    if args.dataset == "nyuv2":
        print("  note: raw NYUv2 frames carry no surface normals (written as invalid pixels)")
        extra = " --tasks seg,depth"
    print(f"  train on it with: densemtl train --dataset {args.dataset} --data-root {args.out}{extra}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from densemtl.errors import ConfigError
    from densemtl.training.config import parse_size

    size = parse_size(args.size)
    if args.n_train < 1 or args.n_val < 1:
        raise ConfigError("--n-train and --n-val must be at least 1")
    dataset = {"mtan": "nyuv2", "nyud": "nyud", "pascal_context": "pascal_context"}[args.layout]
    if args.layout == "nyud":
        from densemtl.data.writer_nyud import write_nyud

        write_nyud(args.out, args.n_train, args.n_val, size, args.seed)
    elif args.layout == "pascal_context":
        from densemtl.data.writer_pascal import write_pascal

        write_pascal(args.out, args.n_train, args.n_val, size, args.seed)
    else:
        from densemtl.data.writer import synthesize

        synthesize(args.out, args.n_train, args.n_val, size, args.seed)
    print(
        f"densemtl: wrote {args.n_train} train and {args.n_val} val scenes at {size[0]}x{size[1]} to {args.out} "
        f"({args.layout} layout)"
    )
    extra = "" if args.layout == "mtan" else f" --size {size[0]}x{size[1]}"
    print(f"  train on it with: densemtl train --dataset {dataset} --data-root {args.out}{extra}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Open both splits (folders, counts, headers) and read every file's values: labels in
    -1..num_classes-1, finite images, unit normals, depth with valid pixels. The first bad file
    is a one-line error; depth readings that load as invalid are a warning."""
    from densemtl import data
    from densemtl.data._claims import SIGNAL
    from densemtl.errors import ConfigError

    checkable = ("nyuv2", "cityscapes", "nyud", "pascal_context")
    if args.dataset not in checkable:
        data.DATASETS.get(args.dataset)  # unknown name -> ConfigError with a did-you-mean
        raise ConfigError(f"data check reads datasets on disk ({', '.join(checkable)}), not {args.dataset!r}")
    opened = [
        data.create(args.dataset, split, root=args.data_root, num_classes=args.num_classes)
        for split in ("train", "val")
    ]
    if not all(hasattr(ds, "scan") for ds in opened):
        raise ConfigError(f"dataset {args.dataset!r} cannot be checked: it has no scan()")
    shared = shared_ids(*opened)
    if shared:
        shown = ", ".join(repr(i) for i in shared[:3]) + (", ..." if len(shared) > 3 else "")
        warn(
            f"{len(shared)} of the {len(opened[1])} val ids of {args.data_root} are also train ids ({shown}): "
            "validation would score images the model trained on"
        )
    for ds in opened:
        counts = ds.scan(progress=not args.quiet)  # type: ignore[attr-defined]
        notes = getattr(ds, "scan_notes", [])
        for note in notes[:MAX_FILE_NOTES]:
            warn(note)
        if len(notes) > MAX_FILE_NOTES:
            warn(f"{len(notes) - MAX_FILE_NOTES} more {ds.split} files hold such values")  # type: ignore[attr-defined]
        print(
            f"{ds.split}: {len(ds)} samples, size {ds.size}, tasks {', '.join(ds.tasks)}, "  # type: ignore[attr-defined]
            f"{ds.num_classes} classes: ok"
        )
        standard = getattr(ds, "standard_counts", {}).get(ds.split)  # type: ignore[attr-defined]
        if standard and len(ds) != standard:
            print(f"  note: the standard {ds.split} split has {standard} samples")
        for key, empty in counts.items():  # one all-grey normal map is possible; a whole split is refused on open
            if key.endswith("_empty") and key != "depth_empty" and empty:
                task = key[: -len("_empty")]
                print(f"  warning: {empty} of {counts['samples']} {task} files hold no {SIGNAL[task][1]}")
        if counts.get("depth_unusable"):
            print(
                f"  warning: {counts['depth_unusable']} depth files hold negative, NaN or infinite readings "
                "(read as invalid pixels)"
            )
        if "depth_empty" not in counts:
            continue
        if counts["depth_empty"] == counts["samples"]:
            print("  warning: no depth file has a valid pixel: the depth task would learn nothing")
        elif counts["depth_empty"]:
            print(f"  warning: {counts['depth_empty']} depth files have no valid pixel")
    return 0


#: The files ``data check`` names, per split, for values read as invalid pixels; the rest are counted.
MAX_FILE_NOTES = 10


def warn(line: str) -> None:
    """A ``densemtl: warning:`` line on stderr."""
    import sys

    print(f"densemtl: warning: {line}", file=sys.stderr)


def shared_ids(train: object, val: object) -> list[str]:
    """The ids of ``val`` also in ``train`` (datasets with split lists: ``ids``; else none)."""
    train_ids, val_ids = getattr(train, "ids", None), getattr(val, "ids", None)
    if not train_ids or not val_ids:
        return []
    known = set(train_ids)
    return [i for i in val_ids if i in known]
