"""What an exact resume needs beyond the parts' own ``state_dict``: the random generators and the
data order of an epoch, from any step within it.

Every generator state is kept as tensors and plain values, so a checkpoint loads with
``weights_only=True``. Reading a state draws nothing: saving a checkpoint never changes a run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


def rng_state() -> dict[str, Any]:
    """The state of every global generator: python ``random``, numpy's, torch's CPU one and, where
    CUDA is in use, each device's."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (CUDA states only where CUDA is available with as many devices)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]),
         float(npy["cached_gaussian"]))
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


class EpochOrder(Sampler[int]):
    """The shuffled order of ``n`` samples for one epoch, from position ``start`` on.

    The order is the one a ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))``
    gives: the loader draws one int64 from the generator (its workers' base seed), then its
    sampler takes ``randperm(n)``. Resuming mid-epoch starts at ``start`` without loading the
    batches before it.
    """

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the loader's base-seed draw
        yield from torch.randperm(self.n, generator=gen).tolist()[self.start :]

    def __len__(self) -> int:
        return max(0, self.n - self.start)


def plain(obj: Any) -> Any:
    """``obj`` (nested dicts and lists of records) with numpy scalars and 0-d tensors as Python
    numbers, so that it loads with ``weights_only=True``."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic) or (isinstance(obj, torch.Tensor) and obj.dim() == 0):
        return obj.item()
    return obj
