"""Reading the files of the MTAN layout: listing a folder's ``{i}.npy``, checking headers cheaply.

Every problem is a ``DataError`` (or ``ConfigError`` for a bad argument) naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from densemtl.errors import ConfigError, DataError

_NAME = re.compile(r"^(0|[1-9][0-9]*)\.npy$")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = size  # type: ignore[misc]
        return check_int(h, "size", 1), check_int(w, "size", 1)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(f"size must be (H, W) with positive integers, got {size!r}") from None


def sample_generator(seed: int, epoch: int, index: int, *salt: int) -> torch.Generator:
    """The augmentation generator of sample ``index`` at ``epoch``, from (``seed``, ``epoch``,
    ``index``, ``*salt``); a dataset's ``salt`` keeps its draws apart from another's."""
    words = np.random.SeedSequence([seed % 2**64, epoch % 2**64, index, *salt]).generate_state(2)
    return torch.Generator().manual_seed((int(words[0]) << 31 ^ int(words[1])) & (2**63 - 1))


def checking(count: int, split: str, progress: bool) -> Iterator[int]:
    """``range(count)``, with a progress bar on a terminal when ``progress`` (for ``scan``)."""
    from tqdm import tqdm

    return iter(
        tqdm(range(count), desc=f"checking {split}", unit="sample", leave=False, disable=None if progress else True)
    )


def check_tasks(tasks: object, valid: Sequence[str], message: str, repeated: str) -> tuple[str, ...]:
    """``tasks`` (comma-separated or a sequence) as a tuple of distinct names from ``valid``; else a
    ConfigError ``message`` formatted with ``tasks`` (its repr), ``what`` (the unknown name, or
    ``repeated``) and ``valid`` (comma-separated)."""
    if isinstance(tasks, str):
        names: list | None = [t.strip() for t in tasks.split(",")]
    else:
        names = list(tasks) if isinstance(tasks, Iterable) else None
    unknown = [t for t in names if t not in valid] if names is not None else []
    ok = bool(names) and all(isinstance(t, str) for t in names)  # type: ignore[union-attr]
    if not ok or unknown or len(set(names)) != len(names):  # type: ignore[arg-type]
        what = f"unknown task {unknown[0]!r}" if unknown else repeated
        raise ConfigError(message.format(tasks=repr(tasks), what=what, valid=", ".join(valid)))
    return tuple(names)  # type: ignore[arg-type]


def hw_text(hw: tuple[int, int]) -> str:
    """``(H, W)`` as ``"H×W"`` for messages."""
    return f"{hw[0]}×{hw[1]}"


def list_indices(folder: Path) -> dict[int, Path]:
    """The ``{i}.npy`` files of ``folder`` by index; any other (non-hidden) entry is an error."""
    found: dict[int, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from exc
    for path in entries:
        if path.name.startswith("."):
            continue
        m = _NAME.match(path.name)
        if m is None or not path.is_file():
            raise DataError(f"{path}: unexpected entry; {folder} must hold only files 0.npy .. N-1.npy")
        found[int(m.group(1))] = path
    return found


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file, read cheaply (memory-mapped, no data copied)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    if magic != b"\x93NUMPY":
        raise DataError(f"{path}: {'empty file' if not magic else 'not a .npy file (no NUMPY header)'}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # corrupt files raise ValueError, OSError, EOFError, ...
        reason = one_line(exc)
        if "mmap length" in reason or "No data left" in reason:
            reason = "truncated: shorter than its header says"
        raise DataError(f"{path}: not a readable .npy array ({reason})") from exc
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: not a single .npy array")
    return tuple(int(s) for s in arr.shape), arr.dtype


# folder -> (accepted shapes as predicates on the trailing dims, accepted dtype kinds, description)
_SPECS: dict[str, tuple[tuple[int | None, ...], str, str]] = {
    "image": ((3,), "f", "H×W×3 float"),
    "label": ((1, None), "fiu", "H×W (or H×W×1) numeric"),
    "depth": ((1, None), "f", "H×W×1 (or H×W) float"),
    "normal": ((3,), "f", "H×W×3 float"),
}


def check_header(path: Path, kind: str) -> tuple[int, int]:
    shape, dtype = read_header(path)
    trailing, kinds, desc = _SPECS[kind]
    rank2_ok = not trailing or None in trailing
    ok_shape = (len(shape) == 3 and shape[2] in trailing) or (len(shape) == 2 and rank2_ok)
    if not ok_shape or dtype.kind not in kinds or min(shape, default=0) < 1:
        raise DataError(f"{path}: {kind} must be {desc}, got shape {shape} dtype {dtype}")
    return shape[0], shape[1]


def unusable_depth_files(paths: Sequence[Path]) -> int:
    """0 as soon as one of the ``.npy`` depth files ``paths`` holds a valid (finite, > 0) pixel;
    else how many hold negative or non-finite readings (a flipped sign or a broken conversion,
    not absent depth: all-zero files count 0). Reads memory-mapped, stopping at the first valid file."""
    corrupt = 0
    for path in paths:
        d = np.load(path, mmap_mode="r", allow_pickle=False)
        finite = np.isfinite(d)
        if np.any(finite & (d > 0)):
            return 0
        corrupt += int(not np.all(finite & (d >= 0)))
    return corrupt
