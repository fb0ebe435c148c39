"""NYUv2 and Cityscapes in the preprocessed layout of MTAN / LibMTL.

``ROOT/{train,val}/{image,label,depth,normal}/{i}.npy``: image H×W×3 float, label H×W or H×W×1 (-1 = ignore),
depth H×W×1 (0 = invalid; NYUv2's in metres, so above 100 is refused as millimetres), normal
H×W×3 (all-zero = invalid); images in 0..1 (0..255 floats are refused). Every file's header is checked when
the dataset is opened, with the values of the first sample and that the split has some valid depth;
every sample's values when it is loaded (labels in range, finite images, unit normals), and all of
them by :meth:`MTANDataset.scan` (``densemtl data check``). Problems raise ``DataError`` naming the
file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from densemtl.data import register
from densemtl.data._claims import empty_counts, has_signal, note_unusable
from densemtl.data._files import (
    check_header,
    check_int,
    check_size,
    checking,
    hw_text,
    list_indices,
    one_line,
    sample_generator,
    unusable_depth_files,
)
from densemtl.data.preprocess import CITYSCAPES_CATEGORIES, CITYSCAPES_TRAIN_NAMES, NYUV2_13_NAMES
from densemtl.data.transforms import random_scale_crop_flip, resize_sample
from densemtl.errors import ConfigError, DataError

__all__ = ["MTANDataset", "cityscapes", "nyuv2"]

#: A valid (not all-zero) normal whose length is off 1 by more than this is "not unit" ...
NORMAL_TOLERANCE = 0.25
#: ... and a normal map with more than this fraction of such pixels is refused (normals x100,
#: normals stored as 0..1 or 0..255 colours): resizing may leave a few short ones at edges.
NORMAL_BAD_FRACTION = 0.05
#: An image value this far outside 0..1 is not a [0, 1] image (0..255 floats, a normalised image).
IMAGE_TOLERANCE = 1e-3
#: A NYUv2 depth above this many metres is not one (0.7 .. 10 m): millimetres, most likely.
MAX_INDOOR_DEPTH_M = 100.0
_FOLDER = {"seg": "label", "depth": "depth", "normal": "normal"}


class MTANDataset(Dataset):
    """A split of a dataset in the MTAN layout; see the module docstring.

    ``tasks`` picks the folders read; ``num_classes`` bounds the labels (the folder
    ``label_{num_classes}`` is used when present, else ``label``). ``size`` resizes on load;
    ``augment`` applies :func:`random_scale_crop_flip` with a generator seeded from
    (``seed``, ``epoch``, index); set ``epoch`` (or call :meth:`set_epoch`) every epoch.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        name: str,
        tasks: tuple[str, ...],
        num_classes: int,
        size: Sequence[int] | None = None,
        augment: bool = False,
        seed: int = 0,
        n: int | None = None,
        scales: Sequence[float] = (1.0, 1.2, 1.5),
        class_names: Sequence[str] | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ConfigError(f"{name}: split must be 'train' or 'val', got {split!r}")
        self.name = name
        self.split = split
        self.tasks = tuple(tasks)
        self.num_classes = check_int(num_classes, f"{name} num_classes", 1)
        self.augment = bool(augment)
        self.seed = check_int(seed, "seed", -(2**63))
        self.scales = tuple(float(s) for s in scales)
        self.epoch = 0
        names = tuple(class_names) if class_names is not None else ()
        self.class_names = (
            names if len(names) == self.num_classes else tuple(f"class{i}" for i in range(self.num_classes))
        )
        requested = check_size(size)
        limit = None if n is None else check_int(n, "n", 1)

        self.root = Path(root).expanduser()
        folders = self._folders()
        self._files = self._index(folders, limit)
        self._stored = self._check_headers()
        sizes = set(self._stored)
        if requested is None and len(sizes) > 1:
            first = self._stored[0]
            odd = next(i for i, s in enumerate(self._stored) if s != first)
            raise DataError(
                f"{self._files[odd]['image']}: size {hw_text(self._stored[odd])} differs from "
                f"{self._files[0]['image']} ({hw_text(first)}); pass size=(H, W) to resize"
            )
        self.size: tuple[int, int] = requested if requested is not None else self._stored[0]
        self._read(0)  # the values of one sample, so that a wholly mis-scaled dataset stops here
        if "depth" in self.tasks:
            self._check_some_depth()

    # ---- opening -----------------------------------------------------------------------------
    def _folders(self) -> dict[str, Path]:
        if not self.root.exists():
            raise DataError(f"{self.root}: {self.name} data root does not exist")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: {self.name} data root is not a folder")
        base = self.root / self.split
        if not base.is_dir():
            raise DataError(f"{base}: split folder missing (expected ROOT/{self.split}/image, label, ...)")
        folders = {"image": base / "image"}
        for task in self.tasks:
            if task == "seg":
                options = [base / f"label_{self.num_classes}", base / "label"]
                found = next((p for p in options if p.is_dir()), None)
                if found is None:
                    also = options[0].name
                    raise DataError(f"{options[-1]}: label folder missing (also looked for {also})")
                folders["label"] = found
            else:
                folders[_FOLDER[task]] = base / _FOLDER[task]
        for key, folder in folders.items():
            if not folder.is_dir():
                raise DataError(f"{folder}: {key} folder missing")
        return folders

    def _index(self, folders: dict[str, Path], limit: int | None) -> list[dict[str, Path]]:
        listed = {key: list_indices(folder) for key, folder in folders.items()}
        image_dir, images = folders["image"], listed["image"]
        if not images:
            raise DataError(f"{image_dir}: no samples (expected 0.npy .. N-1.npy)")
        count = len(images)
        for key, files in listed.items():
            if len(files) != count:
                raise DataError(f"{folders[key]}: has {len(files)} files but {image_dir} has {count}")
            for i in range(count):
                if i not in files:
                    raise DataError(f"{folders[key] / f'{i}.npy'}: missing (indices must run 0..{count - 1})")
        if limit is not None and limit > count:
            raise ConfigError(f"n={limit} but {image_dir} holds only {count} samples")
        total = count if limit is None else limit
        return [{key: listed[key][i] for key in folders} for i in range(total)]

    def _check_headers(self) -> list[tuple[int, int]]:
        stored = []
        for files in self._files:
            hw = check_header(files["image"], "image")
            for key, path in files.items():
                if key == "image":
                    continue
                other = check_header(path, key)
                if other != hw:
                    raise DataError(f"{path}: size {hw_text(other)} differs from {files['image']} ({hw_text(hw)})")
            stored.append(hw)
        return stored

    # ---- loading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._files)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the augmentation (call once per epoch)."""
        self.epoch = int(epoch)

    def _load(self, path: Path) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{path}: cannot read .npy ({one_line(exc)})") from exc

    def _label(self, path: Path, index: int) -> torch.Tensor:
        lab = self._load(path).reshape(self._stored[index])  # H×W×1 is the same map
        if lab.dtype.kind == "f":
            if not np.all(np.isfinite(lab)):
                raise DataError(f"{path}: label has NaN or infinite values")
            if np.any(lab != np.round(lab)):
                raise DataError(f"{path}: label has non-integer values")
        lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
        if lo < -1 or hi >= self.num_classes:
            raise DataError(
                f"{path}: label values must be in -1..{self.num_classes - 1} (-1 = ignore) for "
                f"num_classes={self.num_classes}, found {lo}..{hi}"
                + (" (store ignore as -1, not 255)" if hi == 255 else "")
            )
        return torch.from_numpy(lab.astype(np.int64))

    def _normal(self, path: Path) -> torch.Tensor:
        normal = self._load(path).astype(np.float32)
        normal[~np.isfinite(normal).all(axis=2)] = 0.0
        norm = np.linalg.norm(normal, axis=2)
        valid = norm > 0
        if valid.any():
            off = np.abs(norm[valid] - 1.0) > NORMAL_TOLERANCE
            if off.mean() > NORMAL_BAD_FRACTION:
                raise DataError(
                    f"{path}: normals must be unit vectors (all-zero = invalid), but {off.mean():.0%} of the "
                    f"valid pixels have a length outside {1 - NORMAL_TOLERANCE:g}..{1 + NORMAL_TOLERANCE:g} "
                    f"(median {np.median(norm[valid]):.3g})"
                )
        return torch.from_numpy(normal).permute(2, 0, 1).contiguous()

    def _depth(self, path: Path, index: int) -> torch.Tensor:
        depth = self._load(path).astype(np.float32).reshape(self._stored[index])
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0  # unusable readings count as invalid
        if self.name == "nyuv2" and depth.size and depth.max() > MAX_INDOOR_DEPTH_M:
            raise DataError(f"{path}: depth must be metres, found {depth.max():g} (millimetres? divide by 1000)")
        return torch.from_numpy(depth)[None]

    def _check_some_depth(self) -> None:
        """A DataError when no depth file holds a valid (finite, > 0) pixel and some hold negative
        or non-finite readings: a flipped sign or a broken conversion, not absent depth (all-zero
        depth, a frame without disparity, is allowed; ``data check`` warns of it). Stops at the
        first valid pixel."""
        corrupt = unusable_depth_files([files["depth"] for files in self._files])
        if corrupt:
            folder = self._files[0]["depth"].parent
            raise DataError(
                f"{folder}: no valid depth pixel in any of its {len(self._files)} files, and {corrupt} hold "
                "negative, NaN or infinite readings (depth must be > 0, 0 = invalid); is the sign or scale wrong?"
            )

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` at its stored size, its values checked (DataError naming the file)."""
        files = self._files[index]
        image = self._load(files["image"]).astype(np.float32)
        if not np.all(np.isfinite(image)):
            raise DataError(f"{files['image']}: image has NaN or infinite values")
        lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
        if lo < -IMAGE_TOLERANCE or hi > 1 + IMAGE_TOLERANCE:
            hint = " (stored as 0..255? divide by 255)" if 1.5 < hi <= 255 and lo >= 0 else ""
            raise DataError(f"{files['image']}: image values must be in 0..1, found {lo:g}..{hi:g}{hint}")
        sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous()}
        if "seg" in self.tasks:
            sample["seg"] = self._label(files["label"], index)
        if "depth" in self.tasks:
            sample["depth"] = self._depth(files["depth"], index)
        if "normal" in self.tasks:
            sample["normal"] = self._normal(files["normal"])
        return sample

    def scan(self, progress: bool = False) -> dict[str, int]:
        """Read and check every sample's values (what loading checks, for all of them at once).

        Each file holding values read as invalid pixels (NaN, infinite; negative depth) is named
        in ``scan_notes``. Returns counts: ``samples``, ``depth_unusable`` (depth files holding negative, NaN or
        infinite readings, read as invalid) and ``depth_empty`` (depth files with no valid pixel).
        The first bad file raises ``DataError``; so does a split without a valid depth pixel.
        """
        counts = {"samples": 0, "depth_unusable": 0, "depth_empty": 0}
        counts |= empty_counts([t for t in self.tasks if t == "normal"])  # converted NYUv2 has none: a warning
        self.scan_notes: list[str] = []  # each file with values read as invalid pixels, for data check
        for i in checking(len(self), self.split, progress):
            sample = self._read(i)
            counts["samples"] += 1
            if "normal" in sample:
                counts["normal_empty"] += int(not has_signal("normal", sample["normal"]))
                note_unusable(self.scan_notes, self._files[i]["normal"], "normal", negative=False)
            if "depth" in sample:
                raw = np.load(self._files[i]["depth"], mmap_mode="r", allow_pickle=False)
                counts["depth_unusable"] += int(not np.all(np.isfinite(raw) & (raw >= 0)))
                note_unusable(self.scan_notes, self._files[i]["depth"], "depth", negative=True)
                counts["depth_empty"] += int(not bool((sample["depth"] > 0).any()))
        if "depth" in self.tasks and counts["depth_empty"] == counts["samples"]:
            self._check_some_depth()
        return counts

    def generator(self, index: int) -> torch.Generator:
        """The augmentation generator of sample ``index`` at the current epoch."""
        return sample_generator(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = int(index) % len(self)
        sample = self._read(index)
        if self._stored[index] != self.size:
            sample = resize_sample(sample, self.size)
        if self.augment:
            sample = random_scale_crop_flip(sample, self.generator(index), scales=self.scales)
        return sample

    def __repr__(self) -> str:
        return (
            f"MTANDataset({self.name!r}, {self.split!r}, root={str(self.root)!r}, n={len(self)}, "
            f"size={self.size}, num_classes={self.num_classes}, augment={self.augment})"
        )


META_FILE = "densemtl.json"


def read_meta(root: str | Path) -> dict:
    """Optional ``ROOT/densemtl.json`` written by ``densemtl data synth``: class count and names."""
    path = Path(root) / META_FILE
    if not path.is_file():
        if path.exists() or path.is_symlink():  # a folder, a dangling link: not the file it names
            raise DataError(f"{path}: not a file (densemtl.json holds the dataset's class count and names)")
        return {}
    import json

    try:
        meta = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object")
    classes = meta.get("num_classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise DataError(f"{path}: 'num_classes' must be an integer >= 1, got {classes!r}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise DataError(f"{path}: 'class_names' must be a list of strings, got {names!r}")
    if "size" in meta:  # data synth's record of the size; checked where it is unused too, as it is a claim
        try:
            check_size(meta["size"])
        except (ConfigError, TypeError, ValueError):
            raise DataError(f"{path}: 'size' must be [H, W], got {meta['size']!r}") from None
    if names and classes is not None and len(names) != classes:  # [] (a source without names): none given
        raise DataError(f"{path}: 'class_names' has {len(names)} names for its {classes} classes ('num_classes')")
    return meta


def _open(
    name: str,
    tasks: tuple[str, ...],
    default_classes: int,
    split: str,
    root: str | None,
    size: tuple[int, int] | None,
    augment: bool,
    seed: int,
    n: int | None,
    num_classes: int | None,
) -> MTANDataset:
    if root is None or str(root) == "":
        raise ConfigError(f"--data-root is required for {name}")
    meta = read_meta(root)
    classes = num_classes if num_classes is not None else int(meta.get("num_classes", default_classes))
    if "class_names" in meta and len(meta["class_names"]) == classes:
        names: Sequence[str] = tuple(meta["class_names"])
    elif name == "nyuv2":
        names = NYUV2_13_NAMES
    else:
        names = CITYSCAPES_CATEGORIES if classes == 7 else CITYSCAPES_TRAIN_NAMES
    return MTANDataset(
        root,
        split,
        name=name,
        tasks=tasks,
        num_classes=classes,
        size=size,
        augment=augment,
        seed=seed,
        n=n,
        class_names=names,
    )


@register("nyuv2")
def nyuv2(
    split: str,
    root: str | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = False,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
) -> MTANDataset:
    """NYUv2 in the MTAN layout: 13 classes (default), depth and normals, stored at 288×384."""
    return _open("nyuv2", ("seg", "depth", "normal"), 13, split, root, size, augment, seed, n, num_classes)


@register("cityscapes")
def cityscapes(
    split: str,
    root: str | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = False,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
) -> MTANDataset:
    """Cityscapes in the MTAN layout: 7 categories (default) or 19 train ids, and depth; 128×256."""
    return _open("cityscapes", ("seg", "depth"), 7, split, root, size, augment, seed, n, num_classes)
