"""Reading the files of the NYUD-MT layout: PNG headers and pixels, ``.npy`` arrays.

Every problem is a one-line ``DataError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from densemtl.data._files import one_line, read_header
from densemtl.errors import DataError

__all__ = ["header", "load_npy", "open_png", "pixels"]

_GREY_MODES = ("L", "P", "I", "I;16")


def open_png(path: Path) -> Image.Image:
    """The image at ``path``, its header parsed (pixels not decoded yet)."""
    try:
        return Image.open(path)  # parses the header only
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"{path}: not a readable image ({one_line(exc)})") from exc


def pixels(path: Path, rgb: bool = False) -> np.ndarray:
    """The decoded pixels; with ``rgb`` a palette or alpha image becomes RGB (labels keep indices)."""
    im = open_png(path)
    try:
        with im:
            return np.array(im.convert("RGB") if rgb and im.mode not in ("RGB", "L") else im)
    except Exception as exc:  # truncated or corrupt data
        raise DataError(f"{path}: cannot decode image ({one_line(exc)})") from exc


def load_npy(path: Path) -> np.ndarray:
    """The array in the ``.npy`` file at ``path``."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read .npy ({one_line(exc)})") from exc


def header(path: Path, key: str) -> tuple[int, int]:
    """(H, W) of one file from its header; its mode or dtype checked for ``key``."""
    if path.suffix == ".npy":
        shape, dtype = read_header(path)
        channels = 3 if key == "normal" else 1
        ok = (len(shape) == 2 and channels == 1) or (len(shape) == 3 and shape[2] == channels)
        if not ok or dtype.kind not in ("f" if key != "edge" else "fiub"):
            want = "H×W×3 float" if key == "normal" else "H×W (or H×W×1) float"
            raise DataError(f"{path}: {key} must be {want}, got shape {shape} dtype {dtype}")
        return shape[0], shape[1]
    with open_png(path) as im:
        mode, (w, h) = im.mode, im.size
    if key == "normal" and mode != "RGB":
        raise DataError(f"{path}: normals must be an 8-bit RGB image, got mode {mode}")
    if key in ("seg", "edge") and mode not in _GREY_MODES:
        raise DataError(f"{path}: {key} must be a single-channel image, got mode {mode}")
    if key == "image" and mode not in ("RGB", "L", "RGBA", "P"):
        raise DataError(f"{path}: image must be an 8-bit RGB image, got mode {mode}")
    return h, w
