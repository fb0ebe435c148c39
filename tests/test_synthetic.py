"""The embedded synthetic dataset: determinism, geometry consistency, and the registry factory."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

import densemtl.data
from densemtl.data.synthetic import (
    CLASS_NAMES,
    NUM_CLASSES,
    SyntheticScenes,
    camera_intrinsics,
    render_scene,
)
from densemtl.errors import ConfigError

SIZE = (48, 64)


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    """30 small training scenes (about 0.2 s in all)."""
    return [render_scene((0, 0, i), SIZE) for i in range(30)]


def test_deterministic_and_distinct() -> None:
    a, b = render_scene((3, 0, 5), SIZE), render_scene((3, 0, 5), SIZE)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for other in [(3, 0, 6), (3, 1, 5), (4, 0, 5)]:  # another index, split, seed
        assert not np.allclose(render_scene(other, SIZE)["depth"], a["depth"])
    train, val = SyntheticScenes("train", 2, SIZE), SyntheticScenes("val", 2, SIZE)
    assert not torch.equal(train[0]["depth"], val[0]["depth"])
    torch.testing.assert_close(train[1], SyntheticScenes("train", 2, SIZE)[1], rtol=0, atol=0)


def test_generator_seed_works() -> None:
    a = render_scene(np.random.default_rng(7), SIZE)
    b = render_scene(np.random.default_rng(7), SIZE)
    np.testing.assert_array_equal(a["image"], b["image"])


def test_shapes_dtypes_ranges(scenes: list[dict[str, np.ndarray]]) -> None:
    out = scenes[0]
    assert out["image"].shape == (*SIZE, 3) and out["image"].dtype == np.float32
    assert out["seg"].shape == SIZE and out["seg"].dtype == np.int64
    assert out["depth"].shape == SIZE and out["depth"].dtype == np.float32
    assert out["normal"].shape == (*SIZE, 3) and out["normal"].dtype == np.float32
    for o in scenes:
        assert o["image"].min() >= 0.0 and o["image"].max() <= 1.0
        assert o["seg"].min() >= 0 and o["seg"].max() < NUM_CLASSES
        assert np.all(np.isfinite(o["depth"])) and o["depth"].min() > 0.1 and o["depth"].max() < 15.0
    sample = SyntheticScenes("val", 1, SIZE)[0]
    assert set(sample) == {"image", "seg", "depth", "normal"}
    assert sample["image"].shape == (3, *SIZE) and sample["image"].dtype == torch.float32
    assert sample["seg"].shape == SIZE and sample["seg"].dtype == torch.long
    assert sample["depth"].shape == (1, *SIZE) and bool((sample["depth"] > 0).all())
    assert sample["normal"].shape == (3, *SIZE)


def test_all_classes_and_several_objects(scenes: list[dict[str, np.ndarray]]) -> None:
    seen = set().union(*(np.unique(o["seg"]).tolist() for o in scenes[:20]))
    assert seen == set(range(NUM_CLASSES)) and len(CLASS_NAMES) == NUM_CLASSES == 7
    objects = [
        int(((ids > 0) & (counts >= 5)).sum())
        for ids, counts in (np.unique(o["instance"], return_counts=True) for o in scenes)
    ]
    assert np.median(objects) >= 3


def test_normals_unit_and_facing_camera(scenes: list[dict[str, np.ndarray]]) -> None:
    k_inv = np.linalg.inv(camera_intrinsics(SIZE))
    v, u = np.mgrid[: SIZE[0], : SIZE[1]]
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ k_inv.T
    for o in scenes:
        np.testing.assert_allclose(np.linalg.norm(o["normal"], axis=-1), 1.0, atol=1e-5)
        assert np.all((o["normal"] * rays).sum(-1) < 0)


def _angles_to_depth_normals(o: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Degrees between rendered normals and finite-difference normals of the back-projected depth,
    and the classes, on pixels whose 3x3 neighbourhood is one surface (one face of one object)."""
    h, w = o["depth"].shape
    v, u = np.mgrid[:h, :w]
    pts = (np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(o["K"]).T) * o["depth"][..., None]
    du, dv = pts[1:-1, 2:] - pts[1:-1, :-2], pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n *= -np.sign((n * pts[1:-1, 1:-1]).sum(-1, keepdims=True))  # towards the camera
    s = o["surface"]
    windows = [s[di : di + h - 2, dj : dj + w - 2] for di in range(3) for dj in range(3)]
    same = np.all([win == s[1:-1, 1:-1] for win in windows], axis=0)
    cos = (n * o["normal"][1:-1, 1:-1]).sum(-1)[same]
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), o["seg"][1:-1, 1:-1][same]


def test_normals_agree_with_depth(scenes: list[dict[str, np.ndarray]]) -> None:
    pairs = [_angles_to_depth_normals(o) for o in scenes[:10]]
    angles, classes = np.concatenate([a for a, _ in pairs]), np.concatenate([c for _, c in pairs])
    assert angles.size > 10000
    assert np.median(angles) < 1.0 and np.percentile(angles, 90) < 5.0
    curved = angles[(classes == CLASS_NAMES.index("sphere")) | (classes == CLASS_NAMES.index("cylinder"))]
    assert curved.size > 50 and np.median(curved) < 5.0


def test_class_is_not_a_function_of_colour(scenes: list[dict[str, np.ndarray]]) -> None:
    """Colours quantised to 8 levels per channel: a bin -> majority-class lookup fit on 15 scenes
    is worse on 15 others than always guessing the commonest class, and bins are far from pure."""

    def bins(o: dict[str, np.ndarray]) -> np.ndarray:
        q = np.minimum((o["image"] * 8).astype(int), 7)
        return (q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel()

    def table(outs: list[dict[str, np.ndarray]]) -> np.ndarray:
        tab = np.zeros((512, NUM_CLASSES))
        for o in outs:
            np.add.at(tab, (bins(o), o["seg"].ravel()), 1)
        return tab

    lookup = table(scenes[:15]).argmax(axis=1)
    held = scenes[15:]
    truth = np.concatenate([o["seg"].ravel() for o in held])
    accuracy = np.mean(np.concatenate([lookup[bins(o)] for o in held]) == truth)
    majority = np.bincount(truth).max() / truth.size
    assert accuracy < min(0.6, majority + 0.05)
    tab = table(scenes)
    assert tab.max(axis=1).sum() / tab.sum() < 0.8  # purity; 1.0 if class were a function of colour


def test_geometry_independent_of_resolution() -> None:
    small = render_scene((1, 0, 2), (32, 48))
    big = render_scene((1, 0, 2), (64, 96))
    pooled = big["depth"].reshape(32, 2, 48, 2).mean(axis=(1, 3))
    rel = np.abs(pooled - small["depth"]) / small["depth"]
    assert np.median(rel) < 1e-3 and np.mean(rel < 0.02) > 0.9
    seg_pooled = big["seg"][::2, ::2]
    assert np.mean(seg_pooled == small["seg"]) > 0.85
    np.testing.assert_allclose(camera_intrinsics((64, 96))[0, 0], 2 * camera_intrinsics((32, 48))[0, 0])


def test_dataset_cache_and_copies() -> None:
    ds = SyntheticScenes("train", 3, (24, 32), seed=1)
    first = ds[2]
    first["depth"].zero_()  # the caller's copy; the cache must not change
    assert bool((ds[2]["depth"] > 0).all()) and len(ds._cache) == 1
    assert len(ds) == 3 and ds.size == (24, 32) and ds.tasks == ("seg", "depth", "normal")
    with pytest.raises(IndexError):
        ds[3]


def test_augmentation_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(sample: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        calls.append(int(torch.randint(0, 2**30, (1,), generator=generator)))
        return {**sample, "image": sample["image"].flip(-1)}

    module = types.ModuleType("densemtl.data.transforms")
    module.random_scale_crop_flip = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "densemtl.data.transforms", module)
    ds = SyntheticScenes("train", 2, (24, 32), augment=True)
    plain = SyntheticScenes("train", 2, (24, 32))[0]
    torch.testing.assert_close(ds[0]["image"], plain["image"].flip(-1))
    ds[0]
    ds.set_epoch(1)
    ds[0]
    assert calls[0] == calls[1] != calls[2]


def test_registry_factory() -> None:
    assert "synthetic" in densemtl.data.available()
    ds = densemtl.data.create("synthetic", "train", n=4, size=(32, 48))
    assert isinstance(ds, SyntheticScenes) and len(ds) == 4 and ds[3]["image"].shape == (3, 32, 48)
    assert ds.num_classes == 7
    default = densemtl.data.create("synthetic", "val")
    assert len(default) == 128 and default.size == (96, 128)
    assert len(densemtl.data.create("synthetic", "train")) == 512


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"root": "/data"}, "--data-root"),
        ({"num_classes": 13}, "num_classes"),
        ({"split": "test"}, "split"),
        ({"size": (8, 48)}, r"\(8, 48\)"),
        ({"size": (0, -4)}, "size"),
        ({"size": (32,)}, "size"),
        ({"n": 0}, "n 0"),
    ],
)
def test_bad_inputs(kwargs: dict, match: str) -> None:
    split = kwargs.pop("split", "train")
    with pytest.raises(ConfigError, match=match):
        densemtl.data.create("synthetic", split, **kwargs)
