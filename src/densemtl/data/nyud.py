"""NYUD-MT (``--dataset nyud``): NYUD-v2 with four tasks, in the layout ASTMT, MTI-Net and InvPT use.

::

    ROOT/images/{id}.png          RGB, 8 bits (.jpg also read, as in MTI-Net's copy)
    ROOT/segmentation/{id}.png    40 classes: 0 = unlabelled (ignored: -1), 1..40 -> 0..39
    ROOT/depth/{id}.npy           metres, H×W or H×W×1 float; 0, negative or non-finite = invalid
    ROOT/normals/{id}.png         n = 2·v/255 − 1 per channel, renormalised; a decoded vector shorter
                                  than 0.5 (a grey 127/128 pixel) is invalid (all-zero). A float
                                  H×W×3 .npy in [-1, 1] is also read (MTI-Net's copy)
    ROOT/edge/{id}.png            0/255 -> 0/1 (grey levels read as v/255, as InvPT does); a 0/1
                                  float .npy is also read (MTI-Net's copy)
    ROOT/gt_sets/{train,val}.txt  the split's ids, one a line (795 train, 654 val)

When opened, every id of the split must have a file in each task's folder and every file of a
sample the image's size (headers only); the first sample's values are checked then, each sample's
when it loads and all of them by :meth:`NYUDDataset.scan` (``densemtl data check``). A problem is
a one-line ``DataError`` naming the file. Samples are fitted to ``size`` (448×576 by default) as
those codebases do: centred padding with the invalid markers (seg -1, depth 0, normals 0, edge -1;
the image with the ImageNet mean colour) and a centred crop where the image is larger
(``fit="pad"``), or a resize (``fit="resize"``: bilinear image, nearest targets, normals
renormalised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from densemtl.data import register
from densemtl.data._claims import empty_counts, has_signal, note_unusable, require_signal
from densemtl.data._files import (
    check_int,
    check_size,
    check_tasks,
    checking,
    hw_text,
    one_line,
    sample_generator,
    unusable_depth_files,
)
from densemtl.data._fit import fit_sample as fit_to
from densemtl.data._nyud_files import header, load_npy, pixels
from densemtl.data.mtan import NORMAL_BAD_FRACTION, NORMAL_TOLERANCE
from densemtl.data.transforms import random_scale_crop_flip
from densemtl.errors import ConfigError, DataError

__all__ = ["NYUD_40_NAMES", "NYUDDataset", "STANDARD_COUNTS", "fit_sample", "nyud"]

NUM_CLASSES = 40
DEFAULT_SIZE = (448, 576)
TASKS: tuple[str, ...] = ("seg", "depth", "normal", "edge")
STANDARD_COUNTS = {"train": 795, "val": 654}
#: A depth above this many metres is not NYUD's (0.7 .. 10 m): millimetres, most likely.
MAX_DEPTH_M = 100.0
#: An edge map of which more than this fraction is edge is not one (inverted: 0 = edge, 255 = none).
MAX_EDGE_FRACTION = 0.5
#: A decoded normal shorter than this is "no normal" (a grey pixel), read as all-zero.
MIN_NORMAL_LENGTH = 0.5
NYUD_40_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

# key -> (folder, accepted suffixes in order of preference)
_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image": ("images", (".png", ".jpg")),
    "seg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normal": ("normals", (".png", ".npy")),
    "edge": ("edge", (".png", ".npy")),
}
#: Padding: each target's invalid marker (the image takes the ImageNet mean colour, 0 after the
#: usual normalisation, as InvPT pads the normalised image with 0).
_FILL = {"seg": -1, "depth": 0.0, "normal": 0.0, "edge": -1.0}


def _check_edge_fraction(path: Path, fraction: float) -> None:
    """Edges are thin lines: a map of which more than half is edge is inverted (0 = edge) or not an edge map."""
    if fraction > MAX_EDGE_FRACTION:
        raise DataError(
            f"{path}: {fraction:.0%} of the pixels are edges; edges are thin lines of 255 on 0 (an inverted map?)"
        )


def fit_sample(sample: dict[str, torch.Tensor], size: tuple[int, int], fit: str = "pad") -> dict[str, torch.Tensor]:
    """``sample`` at ``size``: centred pad (invalid markers) / centred crop, or ``fit="resize"``."""
    return fit_to(sample, size, _FILL, fit)


class NYUDDataset(Dataset):
    """One split of NYUD-MT; see the module docstring. ``augment`` applies
    :func:`random_scale_crop_flip` after fitting, seeded from (``seed``, epoch, index)."""

    num_classes = NUM_CLASSES
    class_names = NYUD_40_NAMES
    standard_counts = STANDARD_COUNTS
    #: knobs of the tasks' metrics on this dataset: MTI-Net's and InvPT's edge tolerance for NYUD
    task_args: ClassVar[dict[str, dict[str, Any]]] = {"edge": {"max_dist": 0.011}}

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        tasks: str | Sequence[str] = TASKS,
        size: Sequence[int] | None = None,
        fit: str = "pad",
        augment: bool = False,
        seed: int = 0,
        n: int | None = None,
        scales: Sequence[float] = (1.0, 1.2, 1.5),
    ) -> None:
        if split not in ("train", "val"):
            raise ConfigError(f"nyud: split must be 'train' or 'val', got {split!r}")
        if fit not in ("pad", "resize"):
            raise ConfigError(f"nyud: fit must be 'pad' or 'resize', got {fit!r}")
        self.split, self.fit, self.augment = split, fit, bool(augment)
        self.tasks = check_tasks(
            tasks, TASKS, "nyud tasks {tasks} are invalid ({what}); valid: {valid}", "empty or repeated"
        )
        self.seed = check_int(seed, "seed", -(2**63))
        self.scales = tuple(float(s) for s in scales)
        self.epoch = 0
        self.size: tuple[int, int] = check_size(size) or DEFAULT_SIZE
        limit = None if n is None else check_int(n, "n", 1)
        self.root = Path(root).expanduser()
        self.ids = self._read_ids(limit)
        self._files = self._index()
        self._stored = [self._check_headers(files) for files in self._files]
        first = self._read(0)  # the values of one sample, so that a wholly mis-encoded dataset stops here
        if "depth" in self.tasks:
            self._check_some_depth()
        for task in self.tasks:  # a split in which no file holds a normal, an edge, ...: refused
            if not has_signal(task, first[task]):
                files = [f[task] for f in self._files]
                require_signal(task, files, split, lambda i, t=task: self._readers[t](self._files[i][t]))

    # ---- opening -----------------------------------------------------------------------------
    def _read_ids(self, limit: int | None) -> list[str]:
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is not a folder"
            raise DataError(f"{self.root}: nyud data root {what}")
        path = self.root / "gt_sets" / f"{self.split}.txt"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            raise DataError(
                f"{path}: split file missing (expected ROOT/gt_sets/{self.split}.txt, one id a line)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot be read ({one_line(exc)})") from exc
        ids: list[str] = []
        seen: dict[str, int] = {}
        for number, line in enumerate(lines, 1):
            name = line.strip()
            if not name:
                continue
            if "/" in name or "\\" in name or name in (".", ".."):
                raise DataError(f"{path}: line {number}: {name!r} is not an id (a file name without folder)")
            if name in seen:
                raise DataError(f"{path}: line {number}: id {name!r} repeats line {seen[name]}")
            seen[name] = number
            ids.append(name)
        if not ids:
            raise DataError(f"{path}: lists no ids")
        if limit is not None and limit > len(ids):
            raise ConfigError(f"n={limit} but {path} lists only {len(ids)} ids")
        return ids if limit is None else ids[:limit]

    def _index(self) -> list[dict[str, Path]]:
        keys = ("image", *self.tasks)
        listed: dict[str, set[str]] = {}
        for key in keys:
            folder = self.root / _FOLDERS[key][0]
            try:
                listed[key] = {p.name for p in folder.iterdir()}
            except FileNotFoundError:
                raise DataError(f"{folder}: {key} folder missing") from None
            except OSError as exc:
                raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from exc
        files = []
        for name in self.ids:
            sample = {}
            for key in keys:
                folder, suffixes = _FOLDERS[key]
                found = next((s for s in suffixes if name + s in listed[key]), None)
                if found is None:
                    missing = self.root / folder / (name + suffixes[0])
                    raise DataError(f"{missing}: missing (id {name!r} of gt_sets/{self.split}.txt)")
                sample[key] = self.root / folder / (name + found)
            files.append(sample)
        return files

    def _check_headers(self, files: dict[str, Path]) -> tuple[int, int]:
        hw = header(files["image"], "image")
        for key, path in files.items():
            if key != "image" and (other := header(path, key)) != hw:
                raise DataError(f"{path}: size {hw_text(other)} differs from {files['image']} ({hw_text(hw)})")
        return hw

    def _check_some_depth(self) -> None:
        """A DataError when no depth file has a valid pixel but some hold negative or non-finite ones."""
        corrupt = unusable_depth_files([files["depth"] for files in self._files])
        if corrupt:
            raise DataError(
                f"{self._files[0]['depth'].parent}: no valid depth pixel in any of its {len(self._files)} files, "
                f"and {corrupt} hold negative, NaN or infinite readings (depth must be metres > 0, 0 = invalid)"
            )

    # ---- loading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._files)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the augmentation (call once per epoch)."""
        self.epoch = int(epoch)

    def _image(self, path: Path) -> torch.Tensor:
        rgb = pixels(path, rgb=True)
        if rgb.dtype != np.uint8:
            raise DataError(f"{path}: image must have 8-bit channels, got {rgb.dtype}")
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def _seg(self, path: Path) -> torch.Tensor:
        lab = pixels(path).astype(np.int64)
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi > NUM_CLASSES:
            hint = " (store unlabelled as 0, not 255)" if hi == 255 else ""
            raise DataError(f"{path}: segmentation values must be 0 (unlabelled) or 1..40, found {lo}..{hi}{hint}")
        return torch.from_numpy(lab - 1)

    def _depth(self, path: Path) -> torch.Tensor:
        raw = load_npy(path).astype(np.float32)
        depth = raw.reshape(raw.shape[:2]).copy()
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        if depth.size and depth.max() > MAX_DEPTH_M:
            raise DataError(f"{path}: depth must be metres, found {depth.max():g} (millimetres? divide by 1000)")
        return torch.from_numpy(depth)[None]

    def _normal(self, path: Path) -> torch.Tensor:
        if path.suffix == ".npy":
            n = load_npy(path).astype(np.float32)
            n[~np.isfinite(n).all(axis=2)] = 0.0
        else:
            v = pixels(path, rgb=True)
            if v.dtype != np.uint8:
                raise DataError(f"{path}: normals must have 8-bit channels, got {v.dtype}")
            n = v.astype(np.float32) * (2.0 / 255.0) - 1.0
        length = np.linalg.norm(n, axis=2)
        valid = length >= MIN_NORMAL_LENGTH
        if valid.any():
            off = np.abs(length[valid] - 1.0) > NORMAL_TOLERANCE
            if off.mean() > NORMAL_BAD_FRACTION:
                raise DataError(
                    f"{path}: normals must encode unit vectors (n = 2·v/255 − 1), but {off.mean():.0%} of the "
                    f"pixels decode to a length outside {1 - NORMAL_TOLERANCE:g}..{1 + NORMAL_TOLERANCE:g}"
                )
        n = np.where(valid[..., None], n / np.maximum(length, 1e-12)[..., None], 0.0).astype(np.float32)
        return torch.from_numpy(n).permute(2, 0, 1).contiguous()

    def _edge(self, path: Path) -> torch.Tensor:
        if path.suffix == ".npy":
            e = load_npy(path).astype(np.float32)
            e = e.reshape(e.shape[:2])
            if not np.all(np.isfinite(e)) or e.min() < 0 or e.max() > 1:
                raise DataError(
                    f"{path}: edge values must be in 0..1 (1 = edge), found {np.nanmin(e):g}..{np.nanmax(e):g}"
                )
            _check_edge_fraction(path, float((e > 0.5).mean()))
            return torch.from_numpy(e)[None]
        v = pixels(path)
        if v.dtype != np.uint8:
            raise DataError(f"{path}: edge must be an 8-bit image (0 or 255), got {v.dtype}")
        if v.max() == 1:
            raise DataError(f"{path}: edge holds 0/1; the layout stores edges as 0/255")
        _check_edge_fraction(path, float((v > 127).mean()))
        return torch.from_numpy(v.astype(np.float32) / 255.0)[None]

    @property
    def _readers(self) -> dict[str, Callable[[Path], torch.Tensor]]:
        return {"seg": self._seg, "depth": self._depth, "normal": self._normal, "edge": self._edge}

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` at its stored size, its values checked (DataError naming the file)."""
        files = self._files[index]
        readers = self._readers
        sample = {"image": self._image(files["image"])}
        for task in self.tasks:
            sample[task] = readers[task](files[task])
            if tuple(sample[task].shape[-2:]) != self._stored[index]:  # a header that lied
                raise DataError(f"{files[task]}: decoded size differs from {files['image']}")
        return sample

    def scan(self, progress: bool = False) -> dict[str, int]:
        """Read and check every sample (the first bad file raises DataError); return counts:
        ``samples``, ``depth_unusable`` (files with negative/non-finite readings), ``depth_empty``, and
        ``<task>_empty`` (files without a normal, an edge, a labelled pixel); ``scan_notes`` names each
        file with NaN, infinite or (depth) negative values, read as invalid pixels."""
        counts = {"samples": 0, "depth_unusable": 0, "depth_empty": 0, **empty_counts(self.tasks)}
        self.scan_notes: list[str] = []  # each file with values read as invalid pixels, for data check
        for i in checking(len(self), self.split, progress):
            sample = self._read(i)
            counts["samples"] += 1
            for task in self.tasks:
                if task != "depth" and f"{task}_empty" in counts:
                    counts[f"{task}_empty"] += int(not has_signal(task, sample[task]))
            if "normal" in sample and self._files[i]["normal"].suffix == ".npy":
                note_unusable(self.scan_notes, self._files[i]["normal"], "normal", negative=False)
            if "depth" in sample:
                raw = np.load(self._files[i]["depth"], mmap_mode="r", allow_pickle=False)
                counts["depth_unusable"] += int(not np.all(np.isfinite(raw) & (raw >= 0)))
                note_unusable(self.scan_notes, self._files[i]["depth"], "depth", negative=True)
                counts["depth_empty"] += int(not bool((sample["depth"] > 0).any()))
        return counts

    def generator(self, index: int) -> torch.Generator:
        """The augmentation generator of sample ``index`` at the current epoch."""
        return sample_generator(self.seed, self.epoch, index, 0x4E59)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = int(index) % len(self)
        sample = fit_sample(self._read(index), self.size, self.fit)
        if self.augment:
            sample = random_scale_crop_flip(sample, self.generator(index), scales=self.scales)
        return sample

    def __repr__(self) -> str:
        return (
            f"NYUDDataset({self.split!r}, root={str(self.root)!r}, n={len(self)}, size={self.size}, "
            f"tasks={','.join(self.tasks)}, fit={self.fit!r}, augment={self.augment})"
        )


@register("nyud")
def nyud(
    split: str,
    root: str | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = False,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
    tasks: str = ",".join(TASKS),
    fit: str = "pad",
) -> NYUDDataset:
    """NYUD-MT in the ASTMT/MTI-Net/InvPT layout: 40 classes, depth, normals, edges; fitted to
    448×576 by default (``fit=pad``: centred pad/crop; ``fit=resize``); ``tasks`` picks a subset."""
    if root is None or str(root) == "":
        raise ConfigError("--data-root is required for nyud")
    if num_classes not in (None, NUM_CLASSES):
        raise ConfigError(f"nyud has {NUM_CLASSES} classes; got num_classes={num_classes!r}")
    return NYUDDataset(root, split, tasks=tasks, size=size, fit=fit, augment=augment, seed=seed, n=n)
