"""Reading an image to predict on (``densemtl predict``): what is accepted, and how it is scaled.

The model sees a (3, H, W) float image in 0..1. Accepted, each conversion said in a note:

- PNG / JPEG / TIFF / BMP with 8-bit channels (÷ 255): RGB as it is; grey (and 1-bit) replicated to
  3 channels; RGBA / grey+alpha with the alpha dropped; palette and CMYK converted to RGB;
- 16-bit grey PNG / TIFF (÷ 65535), replicated to 3 channels;
- float grey TIFF in 0..1, replicated to 3 channels;
- ``.npy`` H×W, H×W×1, H×W×3 or H×W×4 (alpha dropped): float in 0..1, uint8 as 0..255 (÷ 255),
  uint16 as 0..65535 (÷ 65535).

Refused in one line naming the file and what was found: complex, boolean or other integer arrays,
NaN or infinite values, float values outside 0..1 (beyond :data:`FLOAT_TOLERANCE`), other shapes
and image modes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from densemtl.errors import DataError

__all__ = ["FLOAT_TOLERANCE", "read_image"]

#: How far outside 0..1 a float image may stray (rounding) before it is refused; it is then clipped.
FLOAT_TOLERANCE = 1e-3
#: Integer dtypes read as the full range of their type, and the divisor that brings them to 0..1.
_INT_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
#: PIL modes converted to RGB (8 bits a channel), and what the note says of each.
_TO_RGB = {
    "RGB": None,
    "RGBA": "RGBA, alpha dropped",
    "RGBX": "RGBX, padding channel dropped",
    "L": "grey, replicated to 3 channels",
    "1": "1-bit, read as grey and replicated to 3 channels",
    "LA": "grey with alpha, alpha dropped and grey replicated to 3 channels",
    "P": "palette, converted to RGB",
    "PA": "palette with alpha, converted to RGB",
    "CMYK": "CMYK, converted to RGB",
    "YCbCr": "YCbCr, converted to RGB",
}
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _channels(arr: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """``arr`` (H×W, H×W×1, ×3 or ×4) as H×W×3, each change noted."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        notes.append("grey, replicated to 3 channels")
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        notes.append("alpha channel dropped")
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape) < 1:
        raise DataError(f"image {path} has shape {arr.shape}; expected H×W, H×W×1, H×W×3 or H×W×4")
    return arr


def _scaled(arr: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    """``arr`` as float32 in 0..1: uint8 / uint16 scaled (noted), float checked; others refused."""
    kind = arr.dtype.kind
    if kind == "c":
        raise DataError(f"image {path} holds complex values ({arr.dtype}); expected real numbers in 0..1")
    if arr.dtype in _INT_SCALE:
        top = _INT_SCALE[arr.dtype]
        notes.append(f"{arr.dtype} read as 0..{top:.0f}, scaled to 0..1")
        return arr.astype(np.float32) / np.float32(top)
    if kind != "f":
        raise DataError(
            f"image {path} has dtype {arr.dtype}; expected float in 0..1, uint8 (0..255) or uint16 (0..65535)"
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"image {path} has NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
        hint = " (0..255? divide by 255, or store it as uint8)" if lo >= 0 and 1.5 < hi <= 255 else ""
        raise DataError(f"image {path} holds values {lo:g}..{hi:g}; a float image must be in 0..1{hint}")
    return np.clip(arr, 0.0, 1.0)


def _from_npy(path: Path, notes: list[str]) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)  # the header first: no copy of a huge array yet
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject or arr.dtype.names:
        raise DataError(f"image {path} is not a plain numeric array")
    if arr.ndim not in (2, 3):
        raise DataError(f"image {path} has shape {arr.shape}; expected H×W, H×W×1, H×W×3 or H×W×4")
    return _channels(_scaled(np.asarray(arr), path, notes), path, notes)


def _from_picture(path: Path, notes: list[str]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
        if mode in _TO_RGB:
            if _TO_RGB[mode]:
                notes.append(_TO_RGB[mode])
            return np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255.0)
        if mode not in _SIXTEEN and mode != "F":
            raise DataError(f"image {path} has PIL mode {mode}; expected 8- or 16-bit grey, RGB, RGBA, or float grey")
        arr = np.asarray(im)
    if mode == "F":
        return _channels(_scaled(arr, path, notes), path, notes)
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise DataError(f"image {path} holds values {arr.min()}..{arr.max()}; an integer image must be 8 or 16 bits")
    notes.append("16-bit, scaled by 1/65535")
    return _channels(arr.astype(np.float32) / np.float32(65535.0), path, notes)


def read_image(path: Path) -> tuple[torch.Tensor, str | None]:
    """(3, H, W) float32 in 0..1 from the file at ``path`` (see the module docstring), and a note
    saying which conversion was made (None: an 8-bit RGB picture, or a float H×W×3 ``.npy``)."""
    if not path.exists():
        raise DataError(f"image {path} does not exist")
    if path.is_dir():
        raise DataError(f"image {path} is a folder; give image files (PNG, JPEG, TIFF or .npy)")
    if not path.is_file():  # reading a FIFO waits for a writer forever; /dev/zero never ends
        raise DataError(f"image {path} is not a regular file (a FIFO or a device?); give image files")
    notes: list[str] = []
    try:
        arr = _from_npy(path, notes) if path.suffix.lower() == ".npy" else _from_picture(path, notes)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise DataError(f"image {path} cannot be read ({type(e).__name__})") from None
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    return tensor, (f"image {path}: " + "; ".join(notes)) if notes else None
