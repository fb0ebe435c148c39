"""The MTAN-layout datasets: loading, validation errors, resizing, augmentation, writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from densemtl.data import available, create
from densemtl.data.preprocess import write_frame
from densemtl.data.transforms import random_scale_crop_flip
from densemtl.data.writer import synthesize, write_mtan_layout
from densemtl.errors import ConfigError, DataError

H, W = 6, 8


def _arrays(i: int, classes: int = 13, normals: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    label = rng.integers(-1, classes, size=(H, W)).astype(np.float32)
    depth = rng.uniform(1.0, 5.0, size=(H, W, 1)).astype(np.float32)
    depth[0, :2] = 0.0
    out = {"image": rng.random((H, W, 3), dtype=np.float32), "label": label, "depth": depth}
    if normals:
        normal = rng.normal(size=(H, W, 3)).astype(np.float32)
        normal /= np.linalg.norm(normal, axis=2, keepdims=True)
        normal[1, :3] = 0.0
        out["normal"] = normal
    return out


def _layout(root: Path, n: int = 3, split: str = "val", **kw: object) -> Path:
    for i in range(n):
        write_frame(_arrays(i, **kw), root, split, i)  # type: ignore[arg-type]
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _layout(tmp_path / "nyu")


def test_registered() -> None:
    assert {"nyuv2", "cityscapes"} <= set(available())


def test_load(root: Path) -> None:
    ds = create("nyuv2", "val", root=str(root))
    assert len(ds) == 3 and ds.tasks == ("seg", "depth", "normal")
    assert ds.num_classes == 13 and ds.size == (H, W) and len(ds.class_names) == 13
    s = ds[1]
    ref = _arrays(1)
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["seg"].dtype == torch.long and torch.equal(s["seg"], torch.from_numpy(ref["label"]).long())
    assert s["depth"].shape == (1, H, W) and (s["depth"][0, 0, :2] == 0).all()
    assert s["normal"].shape == (3, H, W) and (s["normal"][:, 1, :3] == 0).all()
    assert torch.allclose(s["image"], torch.from_numpy(ref["image"]).permute(2, 0, 1))
    with pytest.raises(IndexError):
        ds[3]


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-root is required for nyuv2"):
        create("nyuv2", "val")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        create("nyuv2", "val", root=str(missing))
    _layout(tmp_path / "r", split="train")
    with pytest.raises(DataError, match=str(tmp_path / "r" / "val")):
        create("nyuv2", "val", root=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="split"):
        create("nyuv2", "test", root=str(tmp_path / "r"))


def test_missing_folder(root: Path) -> None:
    folder = root / "val" / "normal"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(DataError, match=str(folder)):
        create("nyuv2", "val", root=str(root))
    # Cityscapes has no normals, so the same layout opens.
    assert create("cityscapes", "val", root=str(root), num_classes=13).tasks == ("seg", "depth")


def test_count_mismatch(root: Path) -> None:
    (root / "val" / "depth" / "2.npy").unlink()
    with pytest.raises(DataError, match=str(root / "val" / "depth")):
        create("nyuv2", "val", root=str(root))


def test_misnamed_file(root: Path) -> None:
    (root / "val" / "image" / "2.npy").rename(root / "val" / "image" / "02.npy")
    with pytest.raises(DataError, match=str(root / "val" / "image" / "02.npy")):
        create("nyuv2", "val", root=str(root))


def test_gap_in_indices(root: Path) -> None:
    for key in ("image", "label", "depth", "normal"):
        (root / "val" / key / "1.npy").rename(root / "val" / key / "7.npy")
    with pytest.raises(DataError, match=r"1\.npy: missing"):
        create("nyuv2", "val", root=str(root))


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("image", np.zeros((H, W), np.float32)),  # wrong rank
        ("image", np.zeros((H, W, 4), np.float32)),  # wrong channels
        ("normal", np.zeros((H, W + 1, 3), np.float32)),  # H×W differs from the image
        ("depth", np.zeros((H, W, 1), np.complex64)),  # wrong dtype kind
        ("label", np.zeros((H, W, 2), np.float32)),  # wrong rank
    ],
)
def test_wrong_shape(root: Path, key: str, bad: np.ndarray) -> None:
    path = root / "val" / key / "1.npy"
    np.save(path, bad)
    with pytest.raises(DataError, match=str(path)):
        create("nyuv2", "val", root=str(root))


@pytest.mark.parametrize("content", [b"garbage bytes, not an array", b""])
def test_corrupt_file(root: Path, content: bytes) -> None:
    path = root / "val" / "label" / "1.npy"
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        create("nyuv2", "val", root=str(root))


def test_truncated_file(root: Path) -> None:
    path = root / "val" / "depth" / "2.npy"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=str(path)):
        create("nyuv2", "val", root=str(root))


@pytest.mark.parametrize("value", [13.0, -2.0, 2.5, np.nan])
def test_label_out_of_range(root: Path, value: float) -> None:
    path = root / "val" / "label" / "2.npy"
    label = np.load(path)
    label[0, 0] = value
    np.save(path, label)
    ds = create("nyuv2", "val", root=str(root))  # headers are fine; values are checked on load
    ds[0]
    with pytest.raises(DataError, match=str(path)):
        ds[2]


def test_n_and_bad_options(root: Path) -> None:
    assert len(create("nyuv2", "val", root=str(root), n=2)) == 2
    with pytest.raises(ConfigError, match="n=5"):
        create("nyuv2", "val", root=str(root), n=5)
    with pytest.raises(ConfigError, match="size"):
        create("nyuv2", "val", root=str(root), size=(0, 3))
    with pytest.raises(ConfigError, match="no knob"):
        create("nyuv2", "val", root=str(root), colour=True)


def test_resize(root: Path) -> None:
    ds = create("nyuv2", "val", root=str(root), size=(3, 4))
    s = ds[0]
    assert ds.size == (3, 4)
    assert s["image"].shape == (3, 3, 4) and s["seg"].shape == (3, 4)
    assert s["depth"].shape == (1, 3, 4) and s["normal"].shape == (3, 3, 4)
    ref = _arrays(0)
    assert set(s["seg"].unique().tolist()) <= set(np.unique(ref["label"]).tolist())
    assert set(s["depth"].unique().tolist()) <= set(np.unique(ref["depth"]).tolist())


def test_cityscapes_label_folders(tmp_path: Path) -> None:
    root = _layout(tmp_path / "cs", classes=7, normals=False)
    ds = create("cityscapes", "val", root=str(root))
    assert ds.tasks == ("seg", "depth") and ds.num_classes == 7 and set(ds[0]) == {"image", "seg", "depth"}
    for i in range(3):  # a 19-class label_19 folder next to the 7-class "label" one
        write_frame({"label": _arrays(i, classes=19)["label"]}, root, "val", i, label_dir="label_19")
    ds19 = create("cityscapes", "val", root=str(root), num_classes=19)
    assert ds19.num_classes == 19 and ds19.class_names[13] == "car"
    assert torch.equal(ds19[0]["seg"], torch.from_numpy(_arrays(0, classes=19)["label"]).long())


def _toy() -> dict[str, torch.Tensor]:
    seg = torch.arange(H * W).reshape(H, W) % 5 - 1
    depth = torch.full((1, H, W), 4.0)
    depth[0, :, :3] = 0.0
    normal = torch.zeros(3, H, W)
    normal[0, :, W // 2 :] = 0.6
    normal[2, :, W // 2 :] = 0.8
    return {"image": torch.rand(3, H, W), "seg": seg, "depth": depth, "normal": normal}


def test_augment_scale_divides_depth() -> None:
    s = _toy()
    out = random_scale_crop_flip(s, torch.Generator().manual_seed(0), scales=(2.0,), flip_prob=0.0)
    assert out["depth"].shape == (1, H, W) and out["seg"].shape == (H, W) and out["seg"].dtype == torch.long
    assert set(out["depth"].unique().tolist()) <= {0.0, 2.0}
    assert set(out["seg"].unique().tolist()) <= set(s["seg"].unique().tolist())
    norms = out["normal"].norm(dim=0)
    assert torch.all((norms == 0) | torch.isclose(norms, torch.tensor(1.0)))
    assert torch.equal(s["depth"], _toy()["depth"])  # the input is untouched


def test_augment_flip() -> None:
    s = _toy()
    out = random_scale_crop_flip(s, torch.Generator().manual_seed(0), scales=(1.0,), flip_prob=1.0)
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["seg"], s["seg"].flip(-1)) and (out["seg"] == -1).sum() == (s["seg"] == -1).sum()
    assert torch.equal(out["depth"], s["depth"].flip(-1))
    assert torch.equal(out["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(out["normal"][1:], s["normal"][1:].flip(-1))
    assert out["normal"][0, 0, 0].item() == pytest.approx(-0.6)  # valid normals moved left, x negated
    assert out["normal"][0, 0, W - 1].item() == 0.0 and not torch.signbit(out["normal"][0, 0, W - 1])
    keep = random_scale_crop_flip(s, torch.Generator().manual_seed(0), scales=(1.0,), flip_prob=0.0)
    assert all(torch.equal(keep[k], s[k]) for k in s)
    with pytest.raises(ConfigError):
        random_scale_crop_flip(s, torch.Generator(), scales=(0.5,))


def test_dataset_augment_is_seeded(root: Path) -> None:
    ds = create("nyuv2", "val", root=str(root), augment=True, seed=3)
    a, b = ds[0], ds[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    runs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        runs.append(ds[0]["image"])
    assert any(not torch.equal(runs[0], r) for r in runs[1:])


def test_write_layout_roundtrip(root: Path, tmp_path: Path) -> None:
    ds = create("nyuv2", "val", root=str(root))
    out = tmp_path / "copy"
    assert write_mtan_layout(ds, out, "val") == 3
    again = create("nyuv2", "val", root=str(out))
    for k, v in ds[2].items():
        assert torch.equal(again[2][k], v)
    with pytest.raises(DataError, match=str(out / "val")):
        write_mtan_layout(ds, out, "val")
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_frame(_arrays(0), out, "val", 0)


def test_synthesize_refuses_nonempty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=str(tmp_path)):
        synthesize(tmp_path, 2, 1, (8, 8), 0)
    assert (tmp_path / "keep.txt").read_text() == "mine"


class _FakeSynthetic(torch.utils.data.Dataset):
    tasks, num_classes = ("seg", "depth", "normal"), 7

    def __init__(self, split: str, n: int, size: tuple[int, int], seed: int) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100 + i)
        h, w = self.size
        return {
            "image": torch.rand(3, h, w, generator=g),
            "seg": torch.randint(-1, 7, (h, w), generator=g),
            "depth": torch.rand(1, h, w, generator=g),
            "normal": torch.nn.functional.normalize(torch.randn(3, h, w, generator=g), dim=0),
        }


def test_synthesize_writes_both_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from densemtl.data import DATASETS

    monkeypatch.setitem(DATASETS._factories, "synthetic", _FakeSynthetic)
    out = tmp_path / "synth"
    synthesize(out, 3, 2, (5, 7), 1)
    train = create("nyuv2", "train", root=str(out), num_classes=7)
    assert len(train) == 3 and train.size == (5, 7)
    assert torch.equal(train[1]["seg"], _FakeSynthetic("train", 3, (5, 7), 1)[1]["seg"])
    assert len(create("nyuv2", "val", root=str(out), num_classes=7)) == 2
    with pytest.raises(DataError, match="refusing to overwrite"):
        synthesize(out, 3, 2, (5, 7), 1)
    with pytest.raises(ConfigError, match="n_val"):
        synthesize(tmp_path / "other", 3, 0, (5, 7), 1)


@pytest.mark.skipif("synthetic" not in available(), reason="synthetic dataset not registered yet")
def test_synthesize(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    synthesize(out, 2, 1, (16, 24), 0)
    ds = create("nyuv2", "train", root=str(out), num_classes=7)
    assert len(ds) == 2 and ds.size == (16, 24)
    assert len(create("nyuv2", "val", root=str(out), num_classes=7)) == 1
