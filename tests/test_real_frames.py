"""Real NYUv2 and Cityscapes frames (shared/data) through conversion, the layout and the loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.data import create
from densemtl.data.preprocess import (
    CITYSCAPES_LABELS,
    CITYSCAPES_TRAIN_NAMES,
    cityscapes_disparity_from_png,
    cityscapes_frame,
    cityscapes_id_lut,
    nyuv2_frame,
    nyuv2_map40to13,
    read_map40to13,
    write_frame,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NYU = DATA / "nyuv2-test-1407"
CS = DATA / "cityscapes-frankfurt_000000_000294"
CS_STEM = "frankfurt_000000_000294"

needs_nyu = pytest.mark.skipif(not NYU.is_dir(), reason=f"real NYUv2 frame not found at {NYU}")
needs_cs = pytest.mark.skipif(not CS.is_dir(), reason=f"real Cityscapes frame not found at {CS}")


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            return np.array(im, dtype=np.uint16)
        return np.array(im)


@needs_nyu
def test_nyuv2_frame_roundtrip(tmp_path: Path) -> None:
    rgb, depth_mm = _png(NYU / "rgb.png"), _png(NYU / "depth_filled_mm.png")
    label13 = _png(NYU / "label13.png")
    assert depth_mm.dtype == np.uint16 and depth_mm.max() > 255
    arrays = nyuv2_frame(rgb, depth_mm, label13)
    assert arrays["image"].shape == (288, 384, 3) and arrays["normal"].shape == (288, 384, 3)
    write_frame(arrays, tmp_path, "val", 0)

    ds = create("nyuv2", "val", root=str(tmp_path))
    assert len(ds) == 1 and ds.size == (288, 384) and ds.num_classes == 13
    s = ds[0]
    assert s["image"].shape == (3, 288, 384) and s["image"].min() >= 0.0 and s["image"].max() <= 1.0
    seg = s["seg"]
    assert seg.shape == (288, 384) and seg.min() >= -1 and seg.max() <= 12
    assert (seg == -1).any() and (seg == 11).any()  # void pixels and walls
    assert not (seg == 12).any()  # this image has no window
    depth = s["depth"][0]
    valid = depth > 0
    assert valid.float().mean() > 0.99  # filled depth
    assert depth[valid].min() >= 1.9 and depth[valid].max() <= 9.5
    assert torch.all(s["normal"] == 0)  # no normals for this frame: invalid everywhere


@needs_nyu
def test_nyuv2_raw_depth_keeps_holes() -> None:
    raw = _png(NYU / "depth_raw_mm.png")
    arrays = nyuv2_frame(_png(NYU / "rgb.png"), raw, _png(NYU / "label13.png"))
    holes = (arrays["depth"] == 0).mean()
    assert 0.1 < holes < 0.25  # about 17% of the raw frame has no reading
    valid = arrays["depth"][arrays["depth"] > 0]
    assert valid.min() >= 1.9 and valid.max() <= 9.7


@needs_nyu
def test_nyuv2_map40to13() -> None:
    mapping = read_map40to13(NYU / "map40to13.txt")
    label13 = nyuv2_map40to13(_png(NYU / "label40.png"), mapping)
    assert label13.dtype == np.uint8
    assert (label13 == _png(NYU / "label13.png")).mean() > 0.999


def _cs_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = _png(CS / f"{CS_STEM}_leftImg8bit.png")
    ids = _png(CS / f"{CS_STEM}_gtFine_labelIds.png")
    train = _png(CS / f"{CS_STEM}_gtFine_labelTrainIds.png").astype(np.int64)
    return rgb, ids, np.where(train == 255, -1, train)


@needs_cs
def test_cityscapes_train_ids_match_official() -> None:
    rgb, ids, train = _cs_inputs()
    mapped = cityscapes_frame(rgb, ids, num_classes=19)["label"].astype(np.int64)
    assert mapped.shape == (128, 256)
    # The two 128×256 files were downsampled separately by their source, so 77 boundary pixels
    # (0.23%) disagree with any mapping; every label id's majority train id must match exactly.
    assert (mapped == train).mean() > 0.997
    for i in np.unique(ids):
        values, counts = np.unique(train[ids == i], return_counts=True)
        assert np.all(mapped[ids == i] == values[counts.argmax()]), f"label id {i}"


def test_cityscapes_table() -> None:
    by_id = {lab.id: lab for lab in CITYSCAPES_LABELS}
    assert sorted(by_id) == list(range(-1, 34))
    assert sorted(lab.train_id for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255) == list(range(19))
    assert (by_id[7].train_id, by_id[7].category_id) == (0, 1)  # road: flat
    assert (by_id[26].train_id, by_id[26].category_id) == (13, 7)  # car: vehicle
    lut7, lut19 = cityscapes_id_lut(7), cityscapes_id_lut(19)
    assert lut7[0] == -1 and lut7[23] == 4 and lut7[24] == 5 and lut7[255] == 6  # 255 = license plate
    assert lut19[9] == -1 and lut19[33] == 18 and lut19[255] == -1
    assert len(CITYSCAPES_TRAIN_NAMES) == 19 and CITYSCAPES_TRAIN_NAMES[18] == "bicycle"


@needs_cs
def test_cityscapes_frame_roundtrip(tmp_path: Path) -> None:
    rgb, ids, train = _cs_inputs()
    write_frame(cityscapes_frame(rgb, ids, num_classes=7), tmp_path, "val", 0, label_dir="label_7")
    write_frame({"label": cityscapes_frame(rgb, ids, num_classes=19)["label"]}, tmp_path, "val", 0,
                label_dir="label_19")  # fmt: skip

    ds7 = create("cityscapes", "val", root=str(tmp_path))
    assert ds7.tasks == ("seg", "depth") and ds7.size == (128, 256) and ds7.num_classes == 7
    s = ds7[0]
    seg7 = s["seg"]
    assert set(s) == {"image", "seg", "depth"} and s["image"].shape == (3, 128, 256)
    assert seg7.min() >= -1 and seg7.max() <= 6
    assert torch.all(s["depth"] == 0)  # no disparity for this frame
    # Categories agree with the train ids wherever both are labelled: road -> flat, car -> vehicle, ...
    idt = torch.from_numpy(ids.astype(np.int64))
    assert torch.all(seg7[idt == 7] == 0) and torch.all(seg7[idt == 26] == 6)  # road: flat, car: vehicle
    assert torch.all(seg7[idt == 23] == 4) and torch.all(seg7[idt <= 6] == -1)  # sky; void ids
    t = torch.from_numpy(train)

    ds19 = create("cityscapes", "val", root=str(tmp_path), num_classes=19)
    seg19 = ds19[0]["seg"]
    assert ds19.num_classes == 19 and seg19.shape == (128, 256) and seg19.max() == 13
    assert torch.equal(seg19, torch.from_numpy(cityscapes_id_lut(19)[ids]))
    assert (seg19 == t).float().mean() > 0.997


@needs_cs
def test_cityscapes_disparity_to_depth() -> None:
    rgb, ids, _ = _cs_inputs()
    disp = np.zeros(ids.shape, np.float32)
    disp[:, 128:] = 20.0
    depth = cityscapes_frame(rgb, ids, disparity=disp)["depth"][..., 0]
    assert np.all(depth[:, :128] == 0)
    assert np.allclose(depth[:, 128:], 0.209313 * 2262.52 / 20.0)
    raw = np.array([[0, 1, 257, 5121]], np.uint16)
    assert np.allclose(cityscapes_disparity_from_png(raw), [[0.0, 0.0, 1.0, 20.0]])
