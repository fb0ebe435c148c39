"""PASCAL-Context in the PASCAL-MT layout of ASTMT, MTI-Net and InvPT (``--dataset pascal_context``).

``ROOT/`` holds ``ImageSets/Context/{train,val}.txt`` (one id a line) and, per id:

- ``JPEGImages/{id}.jpg``: the RGB image (read as floats in [0, 1]);
- ``semseg/pascal-context/{id}.png``: ``seg``, the 21 classes of the MTL setting (0 background,
  1-20 the VOC classes: :data:`VOC_CLASSES`); 255 = ignore;
- ``human_parts/{id}.mat``: PASCAL-Part's ``anno`` struct (``objects``: ``class_ind``, ``mask``,
  ``parts``: ``part_name``, ``mask``). ``parts`` paints the part masks of every person (VOC class
  15) that has parts, grouped into 6 parts (:data:`PART_GROUPS`) over a background 0. An image
  without any part label is all ignore (-1), as the ``AddIgnoreRegions`` of those codebases does;
- ``sal_distill/{id}.png``: ``saliency`` = (v / 255 > 0.5);
- ``normals_distill/{id}.png``: ``normal`` = 2 v / 255 - 1 (renormalised), valid only on the pixels
  whose context label (below) is one of :data:`NORMAL_VALID_LABELS` (the context classes that
  are also NYUv2 classes, plus tvmonitor); elsewhere all-zero = invalid;
- ``pascal-context/trainval/{id}.mat``: ``LabelMap``, the 459 context labels (0 = unlabelled);
  ``edge`` = pixels where its 3×3 Laplacian (mirrored border) is non-zero, thinned to one pixel
  (as ASTMT derives the boundaries).

Opening checks that every id has every file the chosen ``tasks`` need and that their sizes
equal the image's; loading checks values (label ranges, 8-bit PNGs, unit normals, known part
names). Each problem is one-line ``DataError`` naming the file; :meth:`PascalContext.scan` reads
every sample (``densemtl data check``). Samples are padded (centred; ignore / invalid fill) and
cropped to ``size`` (512×512 by default, as those codebases; or ``fit=resize``: shrunk to fit,
then padded); ``augment`` applies :func:`random_scale_crop_flip`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from densemtl.data import register
from densemtl.data._claims import empty_counts, has_signal, require_signal
from densemtl.data._files import check_int, check_size, check_tasks, checking, hw_text, one_line, sample_generator
from densemtl.data._fit import fit_sample
from densemtl.data._pascal_files import (
    DEFAULT_SIZE,
    FITS,
    IGNORE_PNG,
    NORMAL_BAD_FRACTION,
    NORMAL_TOLERANCE,
    NORMAL_VALID_IDS,
    NORMAL_VALID_LABELS,
    NUM_CONTEXT_LABELS,
    PAD_VALUE,
    PART_GROUPS,
    TASKS,
    VOC_CLASSES,
    image_size,
    label_edges,
    load_mat,
    mat_shape,
    parts_map,
    path_of,
    read_image,
)
from densemtl.data.transforms import random_scale_crop_flip
from densemtl.errors import ConfigError, DataError

__all__ = [
    "NORMAL_VALID_LABELS",
    "PART_GROUPS",
    "PascalContext",
    "TASKS",
    "VOC_CLASSES",
    "label_edges",
    "parts_map",
    "pascal_context",
]


class PascalContext(Dataset):
    """A split of PASCAL-Context in the PASCAL-MT layout; see the module docstring.

    ``tasks`` picks the targets (and the folders required); ``num_classes`` bounds ``seg``
    (21). ``size`` (H, W) is what samples are padded/cropped to (``fit="pad"``) or shrunk and
    padded to (``fit="resize"``). ``augment`` draws from a generator seeded by (``seed``, epoch,
    index); call :meth:`set_epoch` every epoch. ``n`` keeps the first ``n`` ids of the split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        tasks: str | Sequence[str] = TASKS,
        num_classes: int = len(VOC_CLASSES),
        size: Sequence[int] | None = DEFAULT_SIZE,
        augment: bool = False,
        seed: int = 0,
        n: int | None = None,
        fit: str = "pad",
        scales: Sequence[float] = (1.0, 1.2, 1.5),
    ) -> None:
        if split not in ("train", "val"):
            raise ConfigError(f"pascal_context: split must be 'train' or 'val', got {split!r}")
        if fit not in FITS:
            raise ConfigError(f"pascal_context: fit must be one of {', '.join(FITS)}, got {fit!r}")
        self.split, self.fit, self.augment, self.epoch = split, fit, bool(augment), 0
        self.tasks = check_tasks(
            tasks, TASKS, "tasks {tasks} is invalid for pascal_context ({what}); valid: {valid}", "need distinct names"
        )
        self.num_classes = check_int(num_classes, "pascal_context num_classes", 1)
        self.class_names = (
            VOC_CLASSES if self.num_classes == len(VOC_CLASSES) else tuple(f"class{i}" for i in range(self.num_classes))
        )
        self.seed = check_int(seed, "seed", -(2**63))
        self.scales = tuple(float(s) for s in scales)
        self.size: tuple[int, int] = check_size(size) or DEFAULT_SIZE
        self.root = Path(root).expanduser()
        self.ids = self._read_ids(None if n is None else check_int(n, "n", 1))
        self._keys = ("image", *(t for t in ("seg", "parts", "saliency", "normal") if t in self.tasks))
        if "edge" in self.tasks or "normal" in self.tasks:
            self._keys += ("labels",)
        for key in self._keys:
            folder = path_of(self.root, key, "x").parent
            if not folder.is_dir():
                need = "the images" if key == "image" else "edge and normal" if key == "labels" else f"task {key}"
                raise DataError(f"{folder}: folder missing (needed for {need})")
        self._stored = [self._check_files(id_) for id_ in self.ids]
        first = self._read(0)  # the values of one sample, so that a wholly mis-encoded dataset stops here
        if "saliency" in self.tasks and not has_signal("saliency", first["saliency"]):  # no salient pixel anywhere
            files = [path_of(self.root, "saliency", id_) for id_ in self.ids]
            require_signal("saliency", files, split, lambda i: self._saliency(files[i]))

    # ---- opening -----------------------------------------------------------------------------
    def _read_ids(self, limit: int | None) -> list[str]:
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DataError(f"{self.root}: pascal_context data root {what}")
        listing = self.root / "ImageSets" / "Context" / f"{self.split}.txt"
        try:
            ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            raise DataError(f"{listing}: split list missing (one image id a line)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{listing}: cannot be read ({one_line(exc)})") from None
        if not ids:
            raise DataError(f"{listing}: lists no image ids")
        seen: set[str] = set()
        for id_ in ids:
            if id_ in seen or "/" in id_ or id_ in (".", ".."):
                why = "is listed twice" if id_ in seen else "is not a plain file name"
                raise DataError(f"{listing}: id {id_!r} {why}")
            seen.add(id_)
        if limit is not None and limit > len(ids):
            raise ConfigError(f"n={limit} but {listing} lists only {len(ids)} images")
        return ids[:limit]

    def _check_files(self, id_: str) -> tuple[int, int]:
        """Every needed file of ``id_`` exists and has the image's size (read from headers)."""
        paths = {key: path_of(self.root, key, id_) for key in self._keys}
        for path in paths.values():
            if not path.is_file():
                raise DataError(f"{path}: missing (listed in ImageSets/Context/{self.split}.txt)")
        hw = image_size(paths["image"])
        for key, path in paths.items():
            if key in ("seg", "saliency", "normal"):
                other = image_size(path)
            elif key == "labels":
                other = mat_shape(path, "LabelMap")
                if len(other) != 2:
                    raise DataError(f"{path}: LabelMap must be H×W, got shape {other}")
            else:
                continue  # the image itself; parts masks are checked when read
            if other != hw:
                raise DataError(f"{path}: size {hw_text(other)} differs from {paths['image']} ({hw_text(hw)})")
        return hw

    # ---- reading -----------------------------------------------------------------------------
    def _labels(self, path: Path, hw: tuple[int, int]) -> np.ndarray:
        lab = np.asarray(load_mat(path).get("LabelMap", np.zeros(0)))
        if lab.shape != hw or lab.dtype.kind not in "iuf" or not np.all(np.isfinite(lab)):
            raise DataError(f"{path}: LabelMap must be a finite H×W label map of the image's size {hw_text(hw)}")
        if lab.size and (lab.min() < 0 or lab.max() > NUM_CONTEXT_LABELS or np.any(lab != np.round(lab))):
            raise DataError(f"{path}: LabelMap values must be integers 0..{NUM_CONTEXT_LABELS}")
        return lab.astype(np.int64)

    def _seg(self, path: Path) -> np.ndarray:
        lab = read_image(path, 1).astype(np.int64)
        bad = (lab >= self.num_classes) & (lab != IGNORE_PNG)
        if bad.any():
            raise DataError(
                f"{path}: class values must be 0..{self.num_classes - 1} or {IGNORE_PNG} (ignore), "
                f"found {int(lab[bad].max())}"
            )
        lab[lab == IGNORE_PNG] = -1
        return lab

    def _normal(self, path: Path, labels: np.ndarray) -> np.ndarray:
        normal = read_image(path, 3).astype(np.float32) * (2.0 / 255.0) - 1.0
        valid = np.isin(labels, NORMAL_VALID_IDS)
        norm = np.linalg.norm(normal, axis=2)
        if valid.any():
            off = np.abs(norm[valid] - 1.0) > NORMAL_TOLERANCE
            if off.mean() > NORMAL_BAD_FRACTION:
                raise DataError(
                    f"{path}: normals must be stored as 255·(n + 1)/2 of unit vectors, but {off.mean():.0%} of "
                    f"the valid pixels have a length outside {1 - NORMAL_TOLERANCE:g}..{1 + NORMAL_TOLERANCE:g}"
                )
        valid &= norm > 0
        normal[valid] /= norm[valid][:, None]
        normal[~valid] = 0.0
        return normal

    def _saliency(self, path: Path) -> torch.Tensor:
        """(1, H, W): v / 255 > 0.5. A map holding only 0 and 1 was stored as 0/1, not 0..255: refused."""
        v = read_image(path, 1, grey_rgb=True)
        if v.size and int(v.max()) == 1:
            raise DataError(
                f"{path}: saliency holds only 0 and 1; the layout stores it as 0..255 (v/255 > 0.5 is salient), "
                "so every pixel would read as background (multiply by 255)"
            )
        return torch.from_numpy((v > 127.5).astype(np.float32))[None]

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` at its stored size, its values checked (DataError naming the file)."""
        id_, hw = self.ids[index], self._stored[index]
        path = {key: path_of(self.root, key, id_) for key in self._keys}
        image = read_image(path["image"], 3)
        if image.shape[:2] != hw:
            raise DataError(f"{path['image']}: size changed to {hw_text(image.shape[:2])} since it was opened")
        sample = {"image": torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()}
        labels = self._labels(path["labels"], hw) if "labels" in path else None
        for task in self.tasks:
            if task == "seg":
                sample[task] = torch.from_numpy(self._seg(path["seg"]))
            elif task == "parts":
                sample[task] = torch.from_numpy(parts_map(load_mat(path["parts"]), path["parts"], hw))
            elif task == "saliency":
                sample[task] = self._saliency(path["saliency"])
            elif task == "normal":
                sample[task] = torch.from_numpy(self._normal(path["normal"], labels)).permute(2, 0, 1).contiguous()
            elif task == "edge":
                sample[task] = torch.from_numpy(label_edges(labels))[None]
        return sample

    def scan(self, progress: bool = False) -> dict[str, int]:
        """Read and check every sample. Counts: ``samples``, ``with_person`` (images with a part
        label); ``depth_unusable`` / ``depth_empty`` are 0 (no depth), for ``data check``; ``saliency_empty``
        / ``normal_empty``: maps without a salient pixel / a valid normal."""
        counts = {"samples": 0, "with_person": 0, "depth_unusable": 0, "depth_empty": 0}
        counts |= empty_counts([t for t in self.tasks if t in ("saliency", "normal")])
        for i in checking(len(self), self.split, progress):
            sample = self._read(i)
            counts["samples"] += 1
            for task in ("saliency", "normal"):
                if f"{task}_empty" in counts:
                    counts[f"{task}_empty"] += int(not has_signal(task, sample[task]))
            counts["with_person"] += int("parts" in sample and bool((sample["parts"] > 0).any()))
        return counts

    # ---- samples -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the augmentation (call once per epoch)."""
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        """The augmentation generator of sample ``index`` at the current epoch."""
        return sample_generator(self.seed, self.epoch, index, 0x9A5)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = int(index) % len(self)
        sample = self._read(index)
        if self._stored[index] != self.size:
            sample = fit_sample(sample, self.size, PAD_VALUE, "shrink" if self.fit == "resize" else "pad")
        if self.augment:
            sample = random_scale_crop_flip(sample, self.generator(index), scales=self.scales)
        if "parts" in sample and not (sample["parts"] > 0).any():
            sample["parts"] = torch.full_like(sample["parts"], -1)  # no person left: all ignore
        return sample

    def __repr__(self) -> str:
        return (
            f"PascalContext({self.split!r}, root={str(self.root)!r}, n={len(self)}, size={self.size}, "
            f"tasks={','.join(self.tasks)}, fit={self.fit!r}, augment={self.augment})"
        )


@register("pascal_context")
def pascal_context(
    split: str,
    root: str | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = False,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
    tasks: str = ",".join(TASKS),
    fit: str = "pad",
) -> PascalContext:
    """PASCAL-Context in the PASCAL-MT layout: seg (21 classes), parts, saliency, normal and edge
    (``tasks`` picks some); padded/cropped to ``size`` (512×512, or the size in a
    ``densemtl.json`` written by ``data synth``), or shrunk to fit with ``fit=resize``."""
    if root is None or str(root) == "":
        raise ConfigError("--data-root is required for pascal_context")
    from densemtl.data.mtan import read_meta

    meta = read_meta(root) if Path(root).expanduser().is_dir() else {}
    if meta.get("num_classes", len(VOC_CLASSES)) != len(VOC_CLASSES):
        raise DataError(
            f"{Path(root) / 'densemtl.json'}: 'num_classes' is {meta['num_classes']}, but pascal_context has "
            f"{len(VOC_CLASSES)} classes (background and the 20 VOC classes)"
        )
    if size is None and "size" in meta:
        try:
            size = check_size(meta["size"])
        except ConfigError:
            raise DataError(f"{Path(root) / 'densemtl.json'}: 'size' must be [H, W], got {meta['size']!r}") from None
    return PascalContext(
        root,
        split,
        tasks=tasks,
        num_classes=len(VOC_CLASSES) if num_classes is None else num_classes,
        size=size if size is not None else DEFAULT_SIZE,
        augment=augment,
        seed=seed,
        n=n,
        fit=fit,
    )
