"""Conversion of raw NYUv2 / Cityscapes frames to the MTAN layout (``ROOT/split/{key}/{i}.npy``).

The arrays these functions return are what the layout stores: ``image`` H×W×3 float32 in [0, 1],
``label`` H×W float32 (-1 = ignore), ``depth`` H×W×1 float32 metres (0 = invalid) and, for NYUv2,
``normal`` H×W×3 float32 (all-zero = invalid).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from densemtl.data.transforms import resize_sample
from densemtl.errors import DataError

__all__ = [
    "CITYSCAPES_BASELINE_M",
    "CITYSCAPES_CATEGORIES",
    "CITYSCAPES_FOCAL_PX",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_NAMES",
    "NYUV2_13_NAMES",
    "CityscapesLabel",
    "cityscapes_disparity_from_png",
    "cityscapes_frame",
    "cityscapes_id_lut",
    "label_edges",
    "nyud_frame",
    "nyuv2_frame",
    "nyuv2_map40to13",
    "read_map40to13",
    "write_frame",
]

NYUV2_13_NAMES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
)  # fmt: skip

CITYSCAPES_BASELINE_M = 0.209313
CITYSCAPES_FOCAL_PX = 2262.52


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table."""

    id: int
    name: str
    train_id: int  # 255 or -1: ignored in training
    category_id: int  # 0 = void, 1..7 = the categories below


# The official table (cityscapesscripts/helpers/labels.py), ids 0..33 plus the license plate.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = tuple(
    CityscapesLabel(*row)
    for row in (
        (0, "unlabeled", 255, 0), (1, "ego vehicle", 255, 0), (2, "rectification border", 255, 0),
        (3, "out of roi", 255, 0), (4, "static", 255, 0), (5, "dynamic", 255, 0),
        (6, "ground", 255, 0), (7, "road", 0, 1), (8, "sidewalk", 1, 1), (9, "parking", 255, 1),
        (10, "rail track", 255, 1), (11, "building", 2, 2), (12, "wall", 3, 2), (13, "fence", 4, 2),
        (14, "guard rail", 255, 2), (15, "bridge", 255, 2), (16, "tunnel", 255, 2),
        (17, "pole", 5, 3), (18, "polegroup", 255, 3), (19, "traffic light", 6, 3),
        (20, "traffic sign", 7, 3), (21, "vegetation", 8, 4), (22, "terrain", 9, 4),
        (23, "sky", 10, 5), (24, "person", 11, 6), (25, "rider", 12, 6), (26, "car", 13, 7),
        (27, "truck", 14, 7), (28, "bus", 15, 7), (29, "caravan", 255, 7), (30, "trailer", 255, 7),
        (31, "train", 16, 7), (32, "motorcycle", 17, 7), (33, "bicycle", 18, 7),
        (-1, "license plate", -1, 7),
    )
)  # fmt: skip

CITYSCAPES_CATEGORIES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CITYSCAPES_TRAIN_NAMES = tuple(
    lab.name for lab in sorted(CITYSCAPES_LABELS, key=lambda r: r.train_id) if 0 <= lab.train_id < 255
)


def cityscapes_id_lut(num_classes: int = 7) -> np.ndarray:
    """A 256-entry lookup table from label id to class (-1 = ignore) for 7 categories or 19 train ids.

    Entry 255 stands for id -1 (the license plate, as it reads when stored in uint8); ids with no
    row in the table map to -2 so that callers can report them.
    """
    if num_classes not in (7, 19):
        raise DataError(f"cityscapes num_classes must be 7 or 19, got {num_classes!r}")
    lut = np.full(256, -2, dtype=np.int64)
    for lab in CITYSCAPES_LABELS:
        train = lab.train_id if 0 <= lab.train_id < 255 else -1
        lut[lab.id % 256] = lab.category_id - 1 if num_classes == 7 else train
    return lut


def _check_image(rgb: np.ndarray, what: str) -> tuple[int, int]:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        desc = f"shape {getattr(rgb, 'shape', None)} dtype {getattr(rgb, 'dtype', type(rgb).__name__)}"
        raise DataError(f"{what}: rgb must be an H×W×3 uint8 array, got {desc}")
    return int(rgb.shape[0]), int(rgb.shape[1])


def _check_plane(arr: np.ndarray, hw: tuple[int, int], name: str, what: str) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or tuple(arr.shape) != hw:
        raise DataError(
            f"{what}: {name} must be a {hw[0]}×{hw[1]} array like rgb, got shape {getattr(arr, 'shape', None)}"
        )


def _finish(arrays: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resize H×W(×C) arrays to ``size`` (bilinear image, nearest others) and return layout arrays."""
    sample: dict[str, torch.Tensor] = {"image": torch.from_numpy(arrays["image"]).permute(2, 0, 1)}
    sample["seg"] = torch.from_numpy(arrays["label"])
    sample["depth"] = torch.from_numpy(arrays["depth"])[None]
    if "normal" in arrays:
        sample["normal"] = torch.from_numpy(arrays["normal"]).permute(2, 0, 1)
    out = resize_sample(sample, (int(size[0]), int(size[1])))
    result = {
        "image": out["image"].clamp(0.0, 1.0).permute(1, 2, 0).numpy().astype(np.float32),
        "label": out["seg"].numpy().astype(np.float32),
        "depth": out["depth"].permute(1, 2, 0).numpy().astype(np.float32),
    }
    if "normal" in out:
        result["normal"] = out["normal"].permute(1, 2, 0).numpy().astype(np.float32)
    return {k: np.ascontiguousarray(v) for k, v in result.items()}


def read_map40to13(path: str | Path) -> np.ndarray:
    """Read the 41-entry 40→13 class mapping text file (entry k: 13-class id of 40-class id k)."""
    try:
        mapping = np.loadtxt(path, dtype=np.float64).reshape(-1)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the 40→13 mapping ({str(exc).splitlines()[0]})") from exc
    integral = bool(np.all(mapping == np.round(mapping)))
    if mapping.shape != (41,) or not integral or mapping.min() < 0 or mapping.max() > 13:
        raise DataError(f"{path}: expected 41 integers in 0..13 (entry k = 13-class id of 40-class id k)")
    return mapping.astype(np.int64)


def nyuv2_map40to13(label40: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Map NYUv2 40-class labels (0 void, 1..40) to 13 classes (0 void, 1..13) as uint8."""
    mapping = np.asarray(mapping).reshape(-1).astype(np.int64)
    if mapping.shape[0] != 41:
        raise DataError(f"the 40→13 mapping must have 41 entries (0 = void), got {mapping.shape[0]}")
    lab = np.asarray(label40)
    if lab.size and (lab.min() < 0 or lab.max() > 40):
        raise DataError(f"40-class labels must be in 0..40, found {lab.min()}..{lab.max()}")
    return mapping[lab.astype(np.int64)].astype(np.uint8)


def nyuv2_frame(
    rgb: np.ndarray,
    depth_mm: np.ndarray,
    label13: np.ndarray,
    size: tuple[int, int] = (288, 384),
) -> dict[str, np.ndarray]:
    """Convert one NYUv2 frame to layout arrays at ``size``.

    ``rgb`` H×W×3 uint8; ``depth_mm`` H×W depth in millimetres (0 = no reading); ``label13`` H×W
    with 0 = void and 1..13 the classes (stored as class-1, void as -1). The frame has no surface
    normals, so ``normal`` is all zeros (invalid everywhere).
    """
    what = "nyuv2 frame"
    hw = _check_image(rgb, what)
    _check_plane(depth_mm, hw, "depth_mm", what)
    _check_plane(label13, hw, "label13", what)
    lab = label13.astype(np.int64)
    if lab.min() < 0 or lab.max() > 13:
        raise DataError(f"{what}: label13 values must be 0 (void) or 1..13, found {lab.min()}..{lab.max()}")
    depth = depth_mm.astype(np.float64)
    if not np.all(np.isfinite(depth)) or depth.min() < 0:
        raise DataError(f"{what}: depth_mm must be finite and >= 0 (0 = no reading)")
    arrays = {
        "image": rgb.astype(np.float32) / 255.0,
        "label": (lab - 1).astype(np.float32),
        "depth": (depth / 1000.0).astype(np.float32),
        "normal": np.zeros((*hw, 3), dtype=np.float32),
    }
    return _finish(arrays, size)


def cityscapes_disparity_from_png(raw: np.ndarray) -> np.ndarray:
    """Disparity in pixels from a Cityscapes ``*_disparity.png`` (uint16): (p - 1) / 256, 0 where p = 0."""
    p = np.asarray(raw).astype(np.float64)
    return np.where(p > 0, (p - 1.0) / 256.0, 0.0).astype(np.float32)


def cityscapes_frame(
    rgb: np.ndarray,
    label_ids: np.ndarray,
    num_classes: int = 7,
    size: tuple[int, int] = (128, 256),
    disparity: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Convert one Cityscapes frame (``*_leftImg8bit`` + ``*_gtFine_labelIds``) to layout arrays.

    Labels become the 7 categories (categoryId - 1; void -> -1) or the 19 train ids (ignored ->
    -1). ``disparity`` (pixels, at the full 2048-wide resolution the focal length refers to, same
    H×W as ``rgb``) gives depth = baseline·focal/disparity, 0 where disparity <= 0; without it,
    depth is all zeros (invalid).
    """
    what = "cityscapes frame"
    hw = _check_image(rgb, what)
    _check_plane(label_ids, hw, "label_ids", what)
    ids = np.asarray(label_ids).astype(np.int64)
    bad = (ids < -1) | (ids > 255)
    if bad.any():
        raise DataError(f"{what}: label ids must be Cityscapes ids 0..33 (or -1/255), found {ids[bad][0]}")
    label = cityscapes_id_lut(num_classes)[ids % 256]
    if (label == -2).any():
        unknown = sorted(set(ids[label == -2].tolist()))[:5]
        raise DataError(f"{what}: label ids {unknown} are not in the Cityscapes label table (0..33)")
    if disparity is None:
        depth = np.zeros(hw, dtype=np.float32)
    else:
        _check_plane(disparity, hw, "disparity", what)
        disp = np.asarray(disparity, dtype=np.float64)
        valid = np.isfinite(disp) & (disp > 0)
        safe = np.where(valid, disp, 1.0)
        depth = np.where(valid, CITYSCAPES_BASELINE_M * CITYSCAPES_FOCAL_PX / safe, 0.0).astype(np.float32)
    arrays = {
        "image": rgb.astype(np.float32) / 255.0,
        "label": label.astype(np.float32),
        "depth": depth,
    }
    return _finish(arrays, size)


_LAYOUT_KEYS = {"image": 3, "label": 2, "depth": 3, "normal": 3}


def write_frame(
    sample_arrays: dict[str, np.ndarray],
    root: str | Path,
    split: str,
    index: int,
    *,
    label_dir: str = "label",
) -> None:
    """Write one sample's layout arrays to ``root/split/{key}/{index}.npy`` as float32.

    Keys are ``image``, ``label``, ``depth`` and optionally ``normal``; ``label_dir`` renames the
    label folder (e.g. ``label_7``). Existing files are never overwritten (DataError).
    """
    unknown = set(sample_arrays) - set(_LAYOUT_KEYS)
    if unknown:
        raise DataError(f"write_frame: unknown keys {sorted(unknown)}; valid: {', '.join(_LAYOUT_KEYS)}")
    if int(index) < 0:
        raise DataError(f"write_frame: index must be >= 0, got {index}")
    base = Path(root) / split
    for key, arr in sample_arrays.items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim != _LAYOUT_KEYS[key]:
            raise DataError(f"write_frame: {key} must have rank {_LAYOUT_KEYS[key]}, got shape {arr.shape}")
        folder = base / (label_dir if key == "label" else key)
        path = folder / f"{int(index)}.npy"
        if path.exists():
            raise DataError(f"{path}: already exists; refusing to overwrite")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
        except OSError as exc:
            raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def label_edges(label: np.ndarray) -> np.ndarray:
    """(H, W) bool boundary map of a label map: a pixel whose right or lower 4-neighbour has another
    label (unlabelled 0 counts as a label), so boundaries are one pixel thin, on the upper/left side."""
    lab = np.asarray(label)
    edge = np.zeros(lab.shape, bool)
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return edge


def nyud_frame(
    rgb: np.ndarray,
    depth_mm: np.ndarray,
    label40: np.ndarray,
    normals: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Convert one NYUv2 frame to the files of an NYUD-MT sample, at its own size.

    ``rgb`` H×W×3 uint8; ``depth_mm`` H×W millimetres (0 = no reading); ``label40`` H×W with
    0 = unlabelled and 1..40 the classes; ``normals`` H×W×3 unit vectors (all-zero = none) or None.
    Returns the arrays as the layout stores them, keyed by folder: ``images`` (uint8 RGB),
    ``segmentation`` (uint8 0..40), ``depth`` (float32 metres, 0 = invalid), ``normals`` (uint8,
    v = round((n + 1)·255/2); grey 128 where there is no normal: read back as invalid) and ``edge``
    (uint8 0/255: the boundaries of ``label40``, :func:`label_edges`).
    """
    what = "nyud frame"
    hw = _check_image(rgb, what)
    _check_plane(depth_mm, hw, "depth_mm", what)
    _check_plane(label40, hw, "label40", what)
    lab = np.asarray(label40).astype(np.int64)
    if lab.min() < 0 or lab.max() > 40:
        raise DataError(f"{what}: label40 values must be 0 (unlabelled) or 1..40, found {lab.min()}..{lab.max()}")
    depth = np.asarray(depth_mm).astype(np.float64)
    if not np.all(np.isfinite(depth)) or depth.min() < 0:
        raise DataError(f"{what}: depth_mm must be finite and >= 0 (0 = no reading)")
    if normals is None:
        encoded = np.full((*hw, 3), 128, np.uint8)
    else:
        n = np.asarray(normals, dtype=np.float64)
        if n.shape != (*hw, 3) or not np.all(np.isfinite(n)):
            raise DataError(f"{what}: normals must be a finite {hw[0]}×{hw[1]}×3 array, got shape {n.shape}")
        encoded = np.clip(np.round((n + 1.0) * 127.5), 0, 255).astype(np.uint8)
        encoded[np.all(n == 0, axis=2)] = 128
    return {
        "images": np.ascontiguousarray(rgb),
        "segmentation": lab.astype(np.uint8),
        "depth": (depth / 1000.0).astype(np.float32),
        "normals": encoded,
        "edge": (label_edges(lab) * 255).astype(np.uint8),
    }
