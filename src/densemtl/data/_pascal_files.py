"""The files of the PASCAL-MT layout: where each lives, how each is read and checked, and the
conventions of ASTMT / MTI-Net / InvPT (class maps, part groups, the normals' valid classes, edges
from label boundaries). :mod:`densemtl.data.pascal_context` documents the layout; every problem
here is a one-line ``DataError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from densemtl.data._files import hw_text, one_line
from densemtl.errors import DataError

#: Every task of the layout, in the order of the PASCAL-MT papers (the default set).
TASKS: tuple[str, ...] = ("seg", "parts", "saliency", "normal", "edge")
DEFAULT_SIZE = (512, 512)
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
#: The context label (1..459) of each VOC class, background 0: how the 21-class map was cut.
CONTEXT_OF_VOC: tuple[int, ...] = (
    0, 2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427,
)  # fmt: skip
NUM_CONTEXT_LABELS = 459
PERSON = 15
#: PASCAL-Part's person part names, by part label 1..6 (head, torso, upper arm, lower arm,
#: upper leg, lower leg: ``densemtl.tasks.parts.PART_NAMES``).
PART_GROUPS: tuple[tuple[str, ...], ...] = (
    ("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"),
    ("neck", "torso"),
    ("luarm", "ruarm"),
    ("lhand", "llarm", "rhand", "rlarm"),
    ("luleg", "ruleg"),
    ("lfoot", "llleg", "rfoot", "rlleg"),
)
PART_LABEL: dict[str, int] = {name: k for k, group in enumerate(PART_GROUPS, 1) for name in group}
#: Context labels on which the distilled normals are valid: the 169 context classes whose name
#: is also a NYUv2 class name (the normals' teacher was trained on NYUv2), and tvmonitor (427).
NORMAL_VALID_LABELS: frozenset[int] = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55, 56,
    59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115, 122, 124,
    135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202,
    213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261,
    263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314,
    315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383,
    384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442,
    443, 444, 446, 454, 457,
))  # fmt: skip
NORMAL_VALID_IDS = np.array(sorted(NORMAL_VALID_LABELS), np.int64)
#: A valid normal whose length is off 1 by more than this is "not unit"; a file with more than
#: NORMAL_BAD_FRACTION such pixels is refused (normals stored other than as 255 (n + 1) / 2).
NORMAL_TOLERANCE, NORMAL_BAD_FRACTION = 0.25, 0.05
#: Fill of padded pixels per key: ignore / invalid; the image gets the ImageNet mean colour (InvPT
#: pads the normalised image with 0).
PAD_VALUE = {"image": 0.0, "seg": -1, "parts": -1, "saliency": 255.0, "normal": 0.0, "edge": 255.0}
IGNORE_PNG = 255
FITS = ("pad", "resize")
T = TypeVar("T")


_WHERE = {
    "image": ("JPEGImages", ".jpg"),
    "seg": ("semseg/pascal-context", ".png"),
    "parts": ("human_parts", ".mat"),
    "saliency": ("sal_distill", ".png"),
    "normal": ("normals_distill", ".png"),
    "labels": ("pascal-context/trainval", ".mat"),
}


def path_of(root: Path, key: str, id_: str) -> Path:
    """Where file ``key`` (an image, a task's target, or ``labels``: the context labels) of ``id_`` lives."""
    folder, ext = _WHERE[key]
    return root / folder / f"{id_}{ext}"


def _guarded(path: Path, what: str, read: Callable[[], T]) -> T:
    """``read()``, any failure of which is a DataError naming ``path`` ("cannot read ``what``")."""
    try:
        return read()
    except DataError:
        raise
    except Exception as exc:  # PIL and scipy raise OSError, SyntaxError, ValueError, ... on corrupt files
        raise DataError(f"{path}: cannot read {what} ({one_line(exc)})") from None


def read_image(path: Path, channels: int, grey_rgb: bool = False) -> np.ndarray:
    """An 8-bit image as uint8 (H, W, 3) (``channels`` 3: greyscale converted) or (H, W) (1: a
    grey or palette PNG, palette indices kept; with ``grey_rgb`` also an RGB(A) PNG whose three
    channels are equal, a grey map saved as colour); a DataError naming the file otherwise."""
    from PIL import Image

    def read() -> np.ndarray:
        with Image.open(path) as im:
            if channels == 3 and im.mode in ("L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "1"):
                return np.asarray(im.convert("RGB"))
            if channels == 1 and im.mode in ("L", "P", "1"):
                return np.asarray(im.convert("L") if im.mode == "1" else im)
            if channels == 1 and grey_rgb and im.mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"))
                if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
                    return rgb[..., 0].copy()
                raise DataError(f"{path}: must be a grey image; its RGB channels differ (a colour image?)")
            kind = "an 8-bit RGB" if channels == 3 else "a single-channel 8-bit (grey or palette)"
            raise DataError(f"{path}: must be {kind} image, got PIL mode {im.mode}")

    return _guarded(path, "image", read)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header."""
    from PIL import Image

    def read() -> tuple[int, int]:
        with Image.open(path) as im:
            return im.size[1], im.size[0]

    return _guarded(path, "image", read)


def load_mat(path: Path) -> dict:
    """A .mat file's variables (scipy.io.loadmat), or a DataError naming the file."""
    from scipy.io import loadmat

    return _guarded(path, ".mat", lambda: loadmat(path))


def mat_shape(path: Path, name: str) -> tuple[int, ...]:
    """The shape of variable ``name`` in a .mat file, read from its header (scipy.io.whosmat)."""
    from scipy.io import whosmat

    found = {v[0]: v[1] for v in _guarded(path, ".mat", lambda: whosmat(path))}
    if name not in found:
        raise DataError(f"{path}: no variable {name!r} (has {', '.join(sorted(found)) or 'none'})")
    return tuple(int(s) for s in found[name])


def label_edges(labels: np.ndarray) -> np.ndarray:
    """ASTMT's edges of a label map: |3×3 Laplacian| > 0 with a mirrored border, thinned; float32."""
    from densemtl.tasks._edge_eval import thin

    p = np.pad(labels.astype(np.float64), 1, mode="reflect")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]
    return thin(lap != 0).astype(np.float32)


def _field(record: np.ndarray, name: str, path: Path, where: str) -> np.ndarray:
    try:
        return np.asarray(record[name])
    except (ValueError, KeyError, IndexError, TypeError):
        raise DataError(f"{path}: {where} has no field {name!r} (a PASCAL-Part annotation)") from None


def _shown(value: np.ndarray) -> str:
    """A field's value for a message: the one value it holds, or its shape and type."""
    flat = value.ravel()
    if flat.size == 1 and flat.dtype.kind in "biufcUSO":
        item = flat[0].item() if hasattr(flat[0], "item") else flat[0]
        return repr(item)[:40]
    return f"shape {value.shape} {value.dtype}"


def _structs(value: np.ndarray, path: Path, where: str, fields: tuple[str, ...]) -> np.ndarray:
    """``value`` as a flat struct array with ``fields`` (empty: none), or a DataError naming ``where``."""
    flat = value.ravel()
    if flat.size == 0:
        return flat
    names = flat.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DataError(f"{path}: {where} must be a struct array with field {missing[0]!r}, got {_shown(value)}")
    return flat


def _class_ind(obj: np.void, path: Path, where: str) -> int:
    """``class_ind`` of one object: a single whole number 1..20 (the VOC class)."""
    cls = _field(obj, "class_ind", path, where)
    flat = cls.ravel()
    ok = flat.size == 1 and flat.dtype.kind in "iuf" and np.isfinite(flat[0]) and float(flat[0]).is_integer()
    if not ok or not 1 <= int(flat[0]) < len(VOC_CLASSES):
        raise DataError(f"{path}: {where}.class_ind must be one VOC class 1..{len(VOC_CLASSES) - 1}, got {_shown(cls)}")
    return int(flat[0])


def _part_mask(part: np.void, path: Path, where: str, hw: tuple[int, int]) -> np.ndarray:
    mask = _field(part, "mask", path, where)
    if mask.dtype.kind not in "biuf" or mask.ndim != 2:
        raise DataError(f"{path}: {where}.mask must be an H×W 0/1 mask, got {_shown(mask)}")
    if mask.shape != hw:
        raise DataError(f"{path}: {where}.mask {hw_text(mask.shape)} differs from the image ({hw_text(hw)})")
    if not np.all((mask == 0) | (mask == 1)):
        raise DataError(f"{path}: {where}.mask must hold only 0 and 1")
    return mask.astype(bool)


def parts_map(mat: dict, path: Path, hw: tuple[int, int]) -> np.ndarray:
    """The (H, W) int64 part labels of a ``human_parts`` .mat: 0 background, 1-6 parts of the
    persons with parts, all -1 when there is no part label (no person). Every field read
    (``anno.objects``, ``class_ind``, ``parts``, ``part_name``, ``mask``) is checked: a DataError
    naming the file and the field otherwise."""
    if "anno" not in mat:
        raise DataError(f"{path}: no variable 'anno' (a PASCAL-Part annotation)")
    out = np.zeros(hw, np.int64)
    anno = _structs(np.asarray(mat["anno"]), path, "anno", ("objects",))
    objects = np.zeros(0)
    if anno.size:
        objects = _structs(_field(anno[0], "objects", path, "anno"), path, "anno.objects", ("class_ind", "parts"))
    for k, obj in enumerate(objects, 1):
        where = f"anno.objects({k})"
        cls = _class_ind(obj, path, where)
        if "mask" in (objects.dtype.names or ()):  # the object's own mask: unused, but a wrong one is a corrupt file
            _part_mask(obj, path, where, hw)
        parts = _structs(_field(obj, "parts", path, where), path, f"{where}.parts", ("part_name", "mask"))
        if cls != PERSON:
            continue
        for j, part in enumerate(parts, 1):
            at = f"{where}.parts({j})"
            raw = _field(part, "part_name", path, at).ravel()
            if raw.dtype.kind not in "US" and not all(isinstance(s, str) for s in raw):
                raise DataError(f"{path}: {at}.part_name must be text, got {_shown(raw)}")
            name = "".join(str(s) for s in raw)
            if name not in PART_LABEL:
                raise DataError(f"{path}: unknown person part {name!r}")
            out[_part_mask(part, path, at, hw)] = PART_LABEL[name]
    return out if (out > 0).any() else np.full(hw, -1, np.int64)
