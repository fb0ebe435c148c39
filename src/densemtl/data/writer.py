"""Writing datasets in the MTAN layout (``ROOT/split/{image,label,depth,normal}/{i}.npy``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from densemtl.data.base import MAX_SEED
from densemtl.data.preprocess import write_frame
from densemtl.errors import ConfigError, DataError

__all__ = ["sample_to_arrays", "synthesize", "write_mtan_layout"]


def sample_to_arrays(sample: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A dataset sample (CHW tensors) as layout arrays (HWC float32; label -1 = ignore)."""
    arrays: dict[str, np.ndarray] = {}
    if "image" in sample:
        arrays["image"] = sample["image"].detach().cpu().float().permute(1, 2, 0).numpy()
    if "seg" in sample:
        arrays["label"] = sample["seg"].detach().cpu().float().numpy()
    if "depth" in sample:
        arrays["depth"] = sample["depth"].detach().cpu().float().permute(1, 2, 0).numpy()
    if "normal" in sample:
        arrays["normal"] = sample["normal"].detach().cpu().float().permute(1, 2, 0).numpy()
    return arrays


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def write_mtan_layout(dataset: Any, out: str | Path, split: str, *, progress: bool = False) -> int:
    """Write every sample of ``dataset`` to ``out/split/...`` in the MTAN layout; return the count.

    Refuses (DataError) to write into an existing non-empty ``out/split`` folder.
    """
    if not split or "/" in split or split in (".", ".."):
        raise ConfigError(f"split must be a plain folder name such as 'train' or 'val', got {split!r}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    target = out / split
    if target.exists() and (not target.is_dir() or _is_nonempty_dir(target)):
        raise DataError(f"{target}: already exists and is not empty; refusing to overwrite")
    indices: Any = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"writing {split}", unit="sample")
    count = 0
    for i in indices:
        write_frame(sample_to_arrays(dataset[i]), out, split, i)
        count += 1
    return count


def synthesize(
    out: str | Path,
    n_train: int,
    n_val: int,
    size: Sequence[int],
    seed: int,
    *,
    progress: bool = False,
) -> None:
    """Render the ``synthetic`` dataset's train and val splits into ``out`` in the MTAN layout.

    ``out`` must not exist or be an empty folder (DataError otherwise; nothing is overwritten).
    The result loads with ``create("nyuv2", split, root=out)`` (class count from densemtl.json).
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or _is_nonempty_dir(out)):
        raise DataError(f"{out}: already exists and is not empty; refusing to overwrite (choose a new --out)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0..{MAX_SEED} (2**32 - 1), got {seed!r}")
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"size must be positive, got {size!r}")

    from densemtl.data import create  # lazy: the synthetic dataset registers on package import

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create folder ({exc.strerror or exc})") from exc
    for split, n in (("train", n_train), ("val", n_val)):
        dataset = create("synthetic", split, n=int(n), size=(h, w), seed=seed)
        write_mtan_layout(dataset, out, split, progress=progress)
    meta = {
        "source": "densemtl data synth",
        "seed": seed,
        "size": [h, w],
        "num_classes": int(dataset.num_classes),  # type: ignore[attr-defined]
        "class_names": list(getattr(dataset, "class_names", ())),
    }
    (out / "densemtl.json").write_text(json.dumps(meta, indent=2) + "\n")
