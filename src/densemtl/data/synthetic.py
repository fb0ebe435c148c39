"""The embedded ``synthetic`` dataset: procedurally rendered indoor-like rooms, no download.

The renderer (rooms, objects, ray casting, shading) lives in :mod:`densemtl.data.scenes`; this
module wraps it as a map-style dataset (:class:`SyntheticScenes`, cached, optionally augmented)
and registers the ``synthetic`` factory. Besides the default tasks (seg, depth, normal) it can
yield ``edge`` (the object and room boundaries, one pixel thin, from the renderer's instance,
surface and depth discontinuities: :func:`scene_edges`) and ``saliency`` (the objects against the
room) when asked with ``tasks=`` (``--data-arg tasks=seg,depth,normal,edge,saliency``); the default
samples are unchanged by that. ``render_scene``, ``camera_intrinsics``, ``CLASS_NAMES``
and ``NUM_CLASSES`` are re-exported here for existing imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from densemtl.data import register
from densemtl.data._files import check_tasks
from densemtl.data.scenes import (
    CLASS_NAMES,
    DEFAULT_SIZE,
    FACES,
    FOCAL_FACTOR,
    NUM_CLASSES,
    SeedLike,
    camera_intrinsics,
    render,
    render_scene,
    sample_scene,
)
from densemtl.errors import ConfigError

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_N",
    "DEFAULT_SIZE",
    "FACES",
    "FOCAL_FACTOR",
    "MIN_SIDE",
    "NUM_CLASSES",
    "SPLIT_CODES",
    "SeedLike",
    "SyntheticScenes",
    "TASKS",
    "camera_intrinsics",
    "render",
    "render_scene",
    "sample_scene",
    "scene_edges",
    "synthetic",
]

SPLIT_CODES = {"train": 0, "val": 1}
DEFAULT_N = {"train": 512, "val": 128}
MIN_SIDE = 16
#: Every task the scenes can yield; the first three are the default.
TASKS: tuple[str, ...] = ("seg", "depth", "normal", "edge", "saliency")
DEFAULT_TASKS: tuple[str, ...] = TASKS[:3]
#: Neighbouring pixels whose depths differ by more than this fraction of the nearer one are an
#: occlusion boundary even on one object.
DEPTH_JUMP = 0.05


def scene_edges(instance: np.ndarray, surface: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(H, W) float32 boundary map (1 = edge) of a render's ``instance``, ``surface`` and ``depth``.

    Two 4-neighbours are separated by a boundary when they belong to different objects (or one to
    the room), to different faces of the room (its wall, floor and ceiling creases), or to
    different faces of one object whose depths jump by more than :data:`DEPTH_JUMP` of the nearer
    one (an object occluding itself; on one face a fast change of depth is only a grazing view).
    Only the nearer pixel of each such pair is marked (the first on a tie), so boundaries are one
    pixel thin and lie on the occluding side, as a detector would place them.
    """
    edge = np.zeros(instance.shape, bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        ia, ib, da, db = instance[tuple(a)], instance[tuple(b)], depth[tuple(a)], depth[tuple(b)]
        other_face = surface[tuple(a)] != surface[tuple(b)]
        # a depth jump on one plane is a grazing view, not an edge: only between faces
        jump = other_face & (np.abs(da - db) > DEPTH_JUMP * np.minimum(da, db))
        cut = (ia != ib) | (other_face & (ia == 0)) | jump
        edge[tuple(a)] |= cut & (da <= db)
        edge[tuple(b)] |= cut & (db < da)
    return edge.astype(np.float32)


def _check_size(size: object) -> tuple[int, int]:
    """``size`` as (H, W) ints, or a ConfigError naming it."""
    ok = isinstance(size, Sequence) and len(size) == 2
    ok = ok and all(isinstance(s, int | np.integer) for s in size)  # type: ignore[union-attr]
    if not ok or min(size) < MIN_SIDE:  # type: ignore[arg-type]
        raise ConfigError(f"size {size!r} is invalid for the synthetic dataset: need (H, W), both >= 16")
    return int(size[0]), int(size[1])  # type: ignore[index]


class SyntheticScenes(Dataset):
    """``n`` rendered scenes of ``split``; samples are cached in memory after their first render.

    With ``augment``, ``densemtl.data.transforms.random_scale_crop_flip`` (when present) is applied
    with a generator seeded from (seed, split, index, ``self.epoch``); set ``epoch`` (or call
    :meth:`set_epoch`) each epoch to draw new augmentations.
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        size: tuple[int, int] | None = DEFAULT_SIZE,
        seed: int = 0,
        augment: bool = False,
        tasks: str | Sequence[str] = DEFAULT_TASKS,
    ) -> None:
        if split not in SPLIT_CODES:
            raise ConfigError(f"split {split!r} is invalid for the synthetic dataset; valid: train, val")
        n = DEFAULT_N[split] if n is None else n
        if not isinstance(n, int | np.integer) or n <= 0:
            raise ConfigError(f"n {n!r} is invalid for the synthetic dataset: need a positive integer")
        self.split, self.n, self.size = split, int(n), _check_size(DEFAULT_SIZE if size is None else size)
        self.seed, self.augment, self.epoch = int(seed), bool(augment), 0
        message = "tasks {tasks} is invalid for the synthetic dataset ({what}); valid: {valid}"
        self.tasks = check_tasks(tasks, TASKS, message, "a task is repeated")
        self._cache: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draw (the rendered scenes do not change)."""
        self.epoch = int(epoch)

    def seed_of(self, index: int) -> tuple[int, int, int]:
        """The seed tuple given to :func:`render_scene` for ``index``."""
        return (self.seed, SPLIT_CODES[self.split], int(index))

    def _sample(self, out: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The image and the targets of ``self.tasks``, in that order, from one render."""
        every = {
            "seg": lambda: torch.from_numpy(out["seg"]),
            "depth": lambda: torch.from_numpy(out["depth"])[None],
            "normal": lambda: torch.from_numpy(out["normal"]).permute(2, 0, 1).contiguous(),
            "edge": lambda: torch.from_numpy(scene_edges(out["instance"], out["surface"], out["depth"]))[None],
            "saliency": lambda: torch.from_numpy((out["instance"] > 0).astype(np.float32))[None],
        }
        sample = {"image": torch.from_numpy(out["image"]).permute(2, 0, 1).contiguous()}
        return sample | {t: every[t]() for t in self.tasks}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} synthetic scenes")
        index = int(index) % self.n
        if index not in self._cache:
            self._cache[index] = self._sample(render_scene(self.seed_of(index), self.size))
        sample = {key: value.clone() for key, value in self._cache[index].items()}
        if not self.augment:
            return sample
        try:
            from densemtl.data.transforms import random_scale_crop_flip
        except ModuleNotFoundError as err:
            if err.name != "densemtl.data.transforms":
                raise
            return sample
        entropy = [self.seed, SPLIT_CODES[self.split], index, self.epoch, 0xA6]
        state = np.random.SeedSequence(entropy).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        return random_scale_crop_flip(sample, generator)


@register("synthetic")
def synthetic(
    split: str,
    root: str | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = False,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
    tasks: str = ",".join(DEFAULT_TASKS),
) -> SyntheticScenes:
    """Procedurally rendered rooms (7 classes, depth, normals; edges and saliency on request with
    ``tasks``, e.g. ``seg,depth,normal,edge,saliency``); no files, any resolution."""
    if root is not None:
        raise ConfigError(f"--data-root is not used by the synthetic dataset; got {root!r} (leave it out)")
    if num_classes not in (None, NUM_CLASSES):
        raise ConfigError(f"num_classes {num_classes!r} is invalid: the synthetic dataset has {NUM_CLASSES}")
    return SyntheticScenes(split, n, size, seed, augment, tasks)
