"""Writing NYUD-MT samples (``densemtl data synth --layout nyud``): PNG images, labels, normals and
edges, NPY depth, ``gt_sets/{train,val}.txt``; the layout :mod:`densemtl.data.nyud` reads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from densemtl.errors import ConfigError, DataError

__all__ = ["FOLDERS", "sample_to_files", "write_nyud", "write_nyud_sample", "write_split"]

#: Each folder of the layout and the suffix of its files.
FOLDERS = {"images": ".png", "segmentation": ".png", "depth": ".npy", "normals": ".png", "edge": ".png"}


def sample_to_files(sample: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A dataset sample (CHW tensors; seg -1 = ignore, normals all-zero = invalid, edge 0/1) as the
    arrays the layout stores, keyed by folder (see :func:`densemtl.data.preprocess.nyud_frame`)."""
    out = {"images": np.round(sample["image"].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)}
    if "seg" in sample:
        seg = sample["seg"].numpy().astype(np.int64)
        if seg.max() >= 40:
            raise DataError(f"nyud layout holds 40 classes; this sample has label {seg.max()}")
        out["segmentation"] = np.where(seg < 0, 0, seg + 1).astype(np.uint8)
    if "depth" in sample:
        out["depth"] = sample["depth"][0].numpy().astype(np.float32)
    if "normal" in sample:
        n = sample["normal"].permute(1, 2, 0).numpy().astype(np.float64)
        encoded = np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
        encoded[np.all(n == 0, axis=2)] = 128  # decodes to a vector of length ~0: invalid
        out["normals"] = encoded
    if "edge" in sample:
        out["edge"] = np.where(sample["edge"][0].numpy() > 0.5, 255, 0).astype(np.uint8)
    return out


def write_nyud_sample(files: dict[str, np.ndarray], root: str | Path, sample_id: str) -> None:
    """Write one sample's arrays (keyed by folder) to ``root/{folder}/{sample_id}.{png,npy}``.

    Existing files are never overwritten (DataError)."""
    unknown = set(files) - set(FOLDERS)
    if unknown:
        raise DataError(f"write_nyud_sample: unknown folders {sorted(unknown)}; valid: {', '.join(FOLDERS)}")
    for folder, arr in files.items():
        path = Path(root) / folder / f"{sample_id}{FOLDERS[folder]}"
        if path.exists():
            raise DataError(f"{path}: already exists; refusing to overwrite")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if folder == "depth":
                np.save(path, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
            else:
                Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def write_split(root: str | Path, split: str, ids: Sequence[str]) -> None:
    """``root/gt_sets/{split}.txt``: one id a line."""
    path = Path(root) / "gt_sets" / f"{split}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def write_nyud(out: str | Path, n_train: int, n_val: int, size: Sequence[int], seed: int) -> None:
    """Render ``n_train`` + ``n_val`` synthetic scenes (seg, depth, normals, edges) at ``size`` into
    ``out`` in the NYUD-MT layout; ids 0000, 0001, ... (train first). ``out`` must be new or empty.
    The result loads with ``create("nyud", split, root=out, size=size)``."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; refusing to overwrite (choose a new --out)")
    for name, value in (("n_train", n_train), ("n_val", n_val), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < (name != "seed"):
            raise ConfigError(f"{name} must be an integer >= {int(name != 'seed')}, got {value!r}")
    from densemtl.data import create  # lazy: the synthetic dataset registers on package import

    start = 0
    for split, n in (("train", int(n_train)), ("val", int(n_val))):
        scenes = create("synthetic", split, n=n, size=tuple(size), seed=int(seed), tasks="seg,depth,normal,edge")
        ids = [f"{start + i:04d}" for i in range(n)]
        for i, sample_id in enumerate(ids):
            write_nyud_sample(sample_to_files(scenes[i]), out, sample_id)
        write_split(out, split, ids)
        start += n
