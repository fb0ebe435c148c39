"""``densemtl eval`` and ``densemtl predict``: use a trained checkpoint."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from densemtl.errors import ConfigError
from densemtl.paths import check_into_folder, check_output_dir, check_output_file, image_inputs, write_bytes
from densemtl.plugin_contracts import check_outputs
from densemtl.report.jsonio import dumps


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    e.add_argument("--dataset", help="default: the run's own")
    e.add_argument("--data-root")
    e.add_argument("--size", help="HxW (default: the run's)")
    e.add_argument("--split", default="val", choices=["train", "val"])
    e.add_argument("--n", type=int, help="evaluate the first N samples only")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default="cpu")
    e.add_argument(
        "--json",
        metavar="FILE",
        help="also write the metrics as JSON (an existing file only with --overwrite; never a checkpoint or run file)",
    )
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.set_defaults(func=run_eval)
    p = sub.add_parser(
        "predict",
        help="write prediction images (the input, then a tile per task)",
        description="Predict every task on each image and write OUT/<stem>_pred.png (the input, then a tile "
        "per task). The image is resized to the run's training height with its own aspect ratio kept, "
        "unless --size says otherwise. A folder given as IMAGE stands for its PNG/JPEG/.npy/TIFF files "
        "(sorted, not its subfolders). Files already in OUT are replaced only with --overwrite. "
        "Inputs: 8-bit PNG/JPEG/TIFF (÷255), 16-bit grey PNG/TIFF (÷65535), "
        "float grey TIFF in 0..1, and .npy arrays H×W[×1|×3|×4]: float in 0..1, uint8 as 0..255, uint16 as "
        "0..65535. Grey is replicated to 3 channels and alpha dropped, each conversion said in a "
        "'densemtl: note:' line; complex, NaN/inf, and float values outside 0..1 are refused.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG/JPEG/TIFF files, .npy arrays, or folders of them (see above)"
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace prediction files already in --out")
    p.add_argument(
        "--size",
        metavar="HxW",
        help="the size the model sees (default: the run's training height, the width from the image's aspect ratio)",
    )
    p.add_argument(
        "--save-npy",
        action="store_true",
        help="also write OUT/<stem>_<task>.npy per task at the image's own size "
        "(seg/parts: int32 class ids; depth: float32 metres; normal: H×W×3 unit vectors; "
        "edge/saliency: probabilities)",
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_predict)


def run_eval(args: argparse.Namespace) -> int:
    from densemtl import data
    from densemtl.data._sample_check import check_sample
    from densemtl.report.console import metrics_header, metrics_row
    from densemtl.training.builders import build_task_set, check_fits_model, resolve_device
    from densemtl.training.checkpoint import load_model
    from densemtl.training.config import parse_size
    from densemtl.training.evaluation import evaluate_model

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    json_path = check_output_file(args.json, "--json", args.overwrite) if args.json is not None else None
    model, cfg, state = load_model(args.checkpoint, args.device)
    name = args.dataset or cfg.dataset
    same = args.dataset is None or args.dataset == cfg.dataset
    root = args.data_root if args.data_root is not None else (cfg.data_root if same else None)
    size = parse_size(args.size) if args.size else (tuple(state.get("size") or ()) or cfg.size)
    check_fits_model(model, cfg.arch, size)  # type: ignore[arg-type]
    ds = data.create(
        name,
        args.split,
        root=root,
        size=size,
        seed=cfg.seed,
        n=args.n if args.n is not None else (cfg.n_val if same and args.split == "val" else None),
        num_classes=cfg.num_classes if same else None,
        **(cfg.data_args if same else {}),
    )
    check_sample(ds, name, args.split)  # a plugin's 2-D image or missing key: one line
    if ds.num_classes != state["num_classes"]:  # type: ignore[attr-defined]
        raise ConfigError(
            f"dataset {name!r} has {ds.num_classes} classes but the checkpoint was "  # type: ignore[attr-defined]
            f"trained for {state['num_classes']}"
        )
    names = tuple(t for t in state["tasks"] if t in ds.tasks)  # type: ignore[attr-defined]
    if not names:
        raise ConfigError(f"dataset {name!r} has none of the checkpoint's tasks {state['tasks']}")
    # the knobs the run trained with (its config's task_args over this dataset's defaults)
    tasks = build_task_set(cfg, state["tasks"], ds).subset(names)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size)
    metrics = evaluate_model(model, loader, tasks, state["num_classes"], resolve_device(args.device), progress=True)
    print(f"densemtl: {name} {args.split} ({len(ds)} images), checkpoint epoch {state['epoch']}")  # type: ignore[arg-type]
    print(metrics_header(tasks))
    print(metrics_row(state["epoch"], metrics, tasks))
    if json_path is not None:
        write_bytes(json_path, (dumps({"metrics": metrics}, indent=2) + "\n").encode())
    return 0


def predict_size(image_hw: tuple[int, int], trained: tuple[int, ...], min_side: int) -> tuple[int, int]:
    """The size an image is predicted at by default: the training height (the image's own when
    the run has none), the width from the image's aspect ratio; each side at least ``min_side``."""
    h_in, w_in = image_hw
    h = int(trained[0]) if trained else h_in
    w = round(h * w_in / h_in)
    return max(h, min_side), max(w, min_side)


#: The longest file name (in bytes) the common file systems hold.
NAME_MAX = 255


def check_name_length(path: Path, name: str) -> None:
    """A ConfigError when the output ``name`` made from input ``path`` is longer than a file name
    may be: found before anything is written, not as a failed write after the folder was made."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        raise ConfigError(
            f"image {path}: the output name {name[:40]}… would be {size} bytes, more than the {NAME_MAX} a file "
            "name may hold; rename the input"
        )


def check_predict_size(path: Path, image_hw: tuple[int, ...], at: tuple[int, int]) -> None:
    """A ConfigError naming ``path`` when the size it would be predicted at has a side above
    :data:`~densemtl.training.config_parse.MAX_SIDE` (an extreme aspect ratio scaled to the training
    height: a 2×20000 strip at 32 rows is 32×320000)."""
    from densemtl.training.config_parse import MAX_SIDE

    if max(at) > MAX_SIDE:
        raise ConfigError(
            f"image {path} ({image_hw[0]}x{image_hw[1]}) would be predicted at {at[0]}x{at[1]}, a side above "
            f"{MAX_SIDE} pixels; crop it, or give --size HxW"
        )


@torch.no_grad()
def run_predict(args: argparse.Namespace) -> int:
    from densemtl.data.images import read_image
    from densemtl.report.task_views import raw_array
    from densemtl.report.visualize import prediction_panel, save_panel
    from densemtl.training.builders import build_task_set, check_fits_model
    from densemtl.training.checkpoint import load_model
    from densemtl.training.config import parse_size

    size = parse_size(args.size, "--size") if args.size is not None else None
    out = check_output_dir(args.out, "--out")
    inputs = image_inputs(args.images)
    targets: dict[str, Path] = {}
    for p in inputs:
        name = f"{p.stem}_pred.png"
        check_name_length(p, name)
        if name in targets:
            raise ConfigError(
                f"{targets[name]} and {p} would both be written to {out / name}; rename one or predict them separately"
            )
        targets[name] = p
    check_into_folder(out, [out / name for name in targets], inputs, args.overwrite)
    model, cfg, state = load_model(args.checkpoint, args.device)
    check_fits_model(model, cfg.arch, size)
    tasks = build_task_set(cfg, state["tasks"])  # the knobs the run trained with
    if args.save_npy:
        arrays = [out / f"{p.stem}_{t}.npy" for p in inputs for t in state["tasks"]]
        for p in inputs:
            for t in state["tasks"]:
                check_name_length(p, f"{p.stem}_{t}.npy")
        check_into_folder(out, arrays, inputs, args.overwrite)
    device = next(model.parameters()).device
    trained = tuple(state.get("size") or ())
    read = [(p, *read_image(p)) for p in inputs]  # every input checked before any is written
    for _, _, note in read:
        if note:
            print(f"densemtl: note: {note}", file=sys.stderr)
    sizes = [size or predict_size(tuple(img.shape[-2:]), trained, model.min_input_side()) for _, img, _ in read]
    for (path, img, _), at in zip(read, sizes, strict=True):  # every size checked before anything is written
        check_predict_size(path, tuple(img.shape[-2:]), at)
    for (path, img, _), at in zip(read, sizes, strict=True):
        h_in, w_in = img.shape[-2:]
        x = img[None].to(device)
        if tuple(x.shape[-2:]) != at:
            x = F.interpolate(x, size=at, mode="bilinear", align_corners=False)
        preds = model(x)
        check_outputs(model, preds, {"image": x}, tuple(state["tasks"]))  # a user's model: one line naming it
        panel = prediction_panel(x[0], {t: v[0] for t, v in preds.items()}, state["num_classes"], tasks=tasks)
        target = out / f"{path.stem}_pred.png"
        save_panel(panel, target)
        print(f"densemtl: wrote {target} ({at[0]}x{at[1]})")
        if args.save_npy:
            for t, v in preds.items():
                full = (
                    v.float()
                    if tuple(v.shape[-2:]) == (h_in, w_in)
                    else F.interpolate(v.float(), size=(h_in, w_in), mode="bilinear", align_corners=False)
                )
                array_path = out / f"{path.stem}_{t}.npy"
                buf = io.BytesIO()
                np.save(buf, raw_array(tasks[t], full[0]), allow_pickle=False)
                write_bytes(array_path, buf.getvalue())
                print(f"densemtl: wrote {array_path}")
    return 0
