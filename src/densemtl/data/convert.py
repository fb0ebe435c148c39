"""``densemtl data convert``: a folder of raw NYUv2 or Cityscapes frames to the MTAN layout.

Each frame goes through :mod:`densemtl.data.preprocess` (the same conversion the tests check on
real frames) and is written as ``ROOT/{train,val}/{image,label,depth,normal}/{i}.npy``. The raw
layouts (docs/datasets/convert.md):

- NYUv2: ``RAW/{train,val}/<frame>/`` (``test`` is read as ``val``), each frame folder holding
  ``rgb.png``, a depth PNG in millimetres (``depth_mm.png``, ``depth_filled_mm.png`` or
  ``depth_raw_mm.png``, first found) and ``label13.png`` (0 void, 1..13), or ``label40.png`` with a
  ``map40to13.txt`` in the frame folder or in RAW. NYUv2 frames carry no normals: they are
  written all-zero (invalid).
- Cityscapes, as distributed: ``RAW/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png``,
  ``RAW/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png`` and, optionally,
  ``RAW/disparity/{train,val}/<city>/<stem>_disparity.png`` (depth = baseline·focal/disparity;
  without it depth is invalid). Labels are written both as 7 categories (``label_7``) and 19
  train ids (``label_19``): ``--num-classes`` chooses at training time.

Nothing is written into ROOT until every frame is converted: the frames go to a sibling temporary
folder that is renamed at the end, so a failed or interrupted conversion leaves no half dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from densemtl.errors import ConfigError, DataError

#: The datasets ``data convert`` reads, and the size each is stored at by default (MTAN's).
SIZES = {"nyuv2": (288, 384), "cityscapes": (128, 256)}
NYU_DEPTH = ("depth_mm.png", "depth_filled_mm.png", "depth_raw_mm.png")
#: A raw NYUv2 frame folder's files, as its error names them.
_WANTED = {
    "rgb": "rgb.png",
    "depth": " or ".join(NYU_DEPTH),
    "label40": "label13.png or label40.png",
    "map": "map40to13.txt (in the frame folder or in RAW) for its label40.png",
}
#: What an existing ROOT may hold for ``--overwrite`` to replace it (a dataset this command wrote).
_REPLACEABLE = {"train", "val", "densemtl.json"}


@dataclass
class Frame:
    """One raw frame: its name and the files it is read from (``None``: absent)."""

    name: str
    files: dict[str, Path | None] = field(default_factory=dict)


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def read_png(path: Path) -> np.ndarray:
    """A PNG as a numpy array (16-bit depth kept as uint16); unreadable: one-line DataError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):
                return np.array(im, dtype=np.uint16)
            return np.array(im)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read as an image ({type(e).__name__})") from None


def _plane(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    if arr.ndim != 2:
        raise DataError(f"{path}: {what} must be a single-channel image, got shape {arr.shape}")
    return arr


# -- finding the frames ------------------------------------------------------------------------------
def nyuv2_frames(raw: Path) -> dict[str, list[Frame]]:
    """The frames of each split of a raw NYUv2 folder; a missing split or file: one line."""
    splits: dict[str, list[Frame]] = {}
    for split, names in (("train", ("train",)), ("val", ("val", "test"))):
        folder = next((raw / n for n in names if (raw / n).is_dir()), None)
        if folder is None:
            raise DataError(f"{raw} has no {' or '.join(names)}/ folder of frames (see docs/datasets/convert.md)")
        frames = []
        for d in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: _natural(p.name)):
            depth = next((d / n for n in NYU_DEPTH if (d / n).is_file()), None)
            files: dict[str, Path | None] = {"rgb": d / "rgb.png", "depth": depth}
            if (d / "label13.png").is_file():
                files["label13"] = d / "label13.png"
            else:
                files["label40"] = d / "label40.png"
                files["map"] = next((p for p in (d / "map40to13.txt", raw / "map40to13.txt") if p.is_file()), None)
            missing = [key for key, path in files.items() if path is None or not path.is_file()]
            if missing:
                raise DataError(f"{d}: no {_WANTED.get(missing[0], missing[0])}")
            frames.append(Frame(f"{folder.name}/{d.name}", files))
        if not frames:
            raise DataError(f"{folder} holds no frame folders (each frame: a folder with rgb.png, depth, labels)")
        splits[split] = frames
    return splits


def cityscapes_frames(raw: Path) -> dict[str, list[Frame]]:
    """The frames of each split of a raw Cityscapes folder (the official layout)."""
    for top in ("leftImg8bit", "gtFine"):
        if not (raw / top).is_dir():
            raise DataError(f"{raw} has no {top}/ folder (the Cityscapes layout: see docs/datasets/convert.md)")
    splits: dict[str, list[Frame]] = {}
    for split in ("train", "val"):
        images = raw / "leftImg8bit" / split
        if not images.is_dir():
            raise DataError(f"{raw} has no leftImg8bit/{split}/ folder")
        frames = []
        for rgb in sorted(images.glob("*/*_leftImg8bit.png"), key=lambda p: _natural(str(p.relative_to(images)))):
            city, stem = rgb.parent.name, rgb.name[: -len("_leftImg8bit.png")]
            label = raw / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            if not label.is_file():
                raise DataError(f"{rgb}: no labels at {label}")
            disparity = raw / "disparity" / split / city / f"{stem}_disparity.png"
            files = {"rgb": rgb, "label": label, "disparity": disparity if disparity.is_file() else None}
            frames.append(Frame(f"{split}/{city}/{stem}", files))
        if not frames:
            raise DataError(f"{images} holds no <city>/*_leftImg8bit.png frames")
        splits[split] = frames
    return splits


# -- converting one frame --------------------------------------------------------------------------------
def convert_nyuv2(frame: Frame, size: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """``{label folder: layout arrays}`` of one NYUv2 frame."""
    from densemtl.data.preprocess import nyuv2_frame, nyuv2_map40to13, read_map40to13

    f = frame.files
    rgb = read_png(f["rgb"])  # type: ignore[arg-type]
    depth = _plane(read_png(f["depth"]), f["depth"], "depth")  # type: ignore[arg-type]
    if "label13" in f:
        label = _plane(read_png(f["label13"]), f["label13"], "label13")  # type: ignore[arg-type]
    else:
        label40 = _plane(read_png(f["label40"]), f["label40"], "label40")  # type: ignore[arg-type]
        label = nyuv2_map40to13(label40, read_map40to13(f["map"]))  # type: ignore[arg-type]
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    return {"label": nyuv2_frame(rgb, depth, label, size)}


def convert_cityscapes(frame: Frame, size: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """``{label folder: layout arrays}`` of one Cityscapes frame: ``label_7`` with everything,
    ``label_19`` with the labels only."""
    from densemtl.data.preprocess import cityscapes_disparity_from_png, cityscapes_frame

    f = frame.files
    rgb = read_png(f["rgb"])  # type: ignore[arg-type]
    if rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., :3]
    ids = _plane(read_png(f["label"]), f["label"], "label ids")  # type: ignore[arg-type]
    disparity = None
    if f["disparity"] is not None:
        disparity = cityscapes_disparity_from_png(_plane(read_png(f["disparity"]), f["disparity"], "disparity"))
    seven = cityscapes_frame(rgb, ids, 7, size, disparity)
    nineteen = cityscapes_frame(rgb, ids, 19, size, None)
    return {"label_7": seven, "label_19": {"label": nineteen["label"]}}


FINDERS: dict[str, Callable[[Path], dict[str, list[Frame]]]] = {
    "nyuv2": nyuv2_frames,
    "cityscapes": cityscapes_frames,
}
CONVERTERS: dict[str, Callable[[Frame, tuple[int, int]], dict[str, dict[str, np.ndarray]]]] = {
    "nyuv2": convert_nyuv2,
    "cityscapes": convert_cityscapes,
}


# -- the command ----------------------------------------------------------------------------------------
def check_out(out: Path, overwrite: bool) -> None:
    """ROOT must be new or empty; with ``overwrite``, an earlier conversion (train/, val/,
    densemtl.json and nothing else) may be replaced. Anything else: one line, nothing touched."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} already exists; refusing to overwrite it (pass --overwrite to replace it)")
    from densemtl.paths import check_not_linked

    for entry in (out, *sorted(out.iterdir())):  # what --overwrite removes: never a link's target
        check_not_linked(entry, "--out ")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _REPLACEABLE)
    if foreign:
        raise ConfigError(
            f"--out {out} holds {', '.join(foreign[:3])}, which is not a converted dataset; "
            "--overwrite only replaces a folder with train/, val/ and densemtl.json"
        )


def convert(
    dataset: str,
    raw: str | Path,
    out: str | Path,
    *,
    size: tuple[int, int] | None = None,
    overwrite: bool = False,
    wrap: Callable[[Iterable[Any], int], Iterable[Any]] = lambda it, n: it,
) -> dict[str, Any]:
    """Convert the raw ``dataset`` frames in ``raw`` to the MTAN layout in ``out``; returns what was
    written (``densemtl.json``'s content). ``wrap(iterable, total)`` shows progress."""
    from densemtl.data.preprocess import write_frame

    if dataset not in FINDERS:
        raise ConfigError(f"data convert reads {' or '.join(FINDERS)}, not {dataset!r}")
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"RAW {raw} {'is a file, not a folder' if raw.exists() else 'does not exist'}")
    if out.resolve() == raw.resolve() or raw.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} is inside RAW {raw}; write the converted dataset elsewhere")
    check_out(out, overwrite)
    size = size or SIZES[dataset]
    splits = FINDERS[dataset](raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    jobs = [(split, i, frame) for split, frames in splits.items() for i, frame in enumerate(frames)]
    no_depth = 0
    try:
        for split, i, frame in wrap(jobs, len(jobs)):
            try:
                arrays = CONVERTERS[dataset](frame, size)
            except DataError as e:  # preprocess's checks name no file: name the frame
                if str(e).startswith(str(raw)):
                    raise
                raise DataError(f"{raw / frame.name}: {e}") from None
            for label_dir, sample in arrays.items():
                write_frame(sample, temp, split, i, label_dir=label_dir)
            no_depth += not np.any(next(iter(arrays.values()))["depth"] > 0)
        meta = {
            "dataset": dataset,
            "source": str(raw.resolve()),
            "size": list(size),
            "samples": {split: len(frames) for split, frames in splits.items()},
            "no_depth": no_depth,
        }
        (temp / "densemtl.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        temp.rename(out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return meta
