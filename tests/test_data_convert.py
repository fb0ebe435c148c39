"""``densemtl data convert``: the real frames of shared/data, laid out as raw NYUv2 and Cityscapes
folders, become MTAN-layout datasets equal to what ``densemtl.data.preprocess`` gives, that
``data check`` and ``train`` read; bad input is one line and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from densemtl.cli.main import main
from densemtl.data.preprocess import cityscapes_frame, nyuv2_frame

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NYU = DATA / "nyuv2-test-1407"
CS = DATA / "cityscapes-frankfurt_000000_000294"
STEM = "frankfurt_000000_000294"


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im, dtype=np.uint16) if im.mode.startswith("I;16") else np.array(im)


@pytest.fixture
def nyu_raw(tmp_path: Path) -> Path:
    """RAW/train/1407 with label13.png; RAW/test/1407 with label40.png and RAW/map40to13.txt."""
    if not NYU.is_dir():
        pytest.skip(f"real frame not found at {NYU}")
    raw = tmp_path / "nyraw"
    shutil.copytree(NYU, raw / "train" / "1407")
    shutil.copytree(NYU, raw / "test" / "1407", ignore=shutil.ignore_patterns("label13.png", "map40to13.txt"))
    shutil.copy2(NYU / "map40to13.txt", raw / "map40to13.txt")
    return raw


@pytest.fixture
def cs_raw(tmp_path: Path) -> Path:
    """The Cityscapes frame in the distributed layout, as train and val."""
    if not CS.is_dir():
        pytest.skip(f"real frame not found at {CS}")
    raw = tmp_path / "csraw"
    for split in ("train", "val"):
        for top, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
            (raw / top / split / "frankfurt").mkdir(parents=True)
            shutil.copy2(CS / f"{STEM}_{suffix}.png", raw / top / split / "frankfurt" / f"{STEM}_{suffix}.png")
    return raw


def test_nyuv2(nyu_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "ny"
    assert main(["data", "convert", "nyuv2", str(nyu_raw), "--out", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 train and 1 val nyuv2 frames at 288x384" in out and "--tasks seg,depth" in out
    expected = nyuv2_frame(_png(NYU / "rgb.png"), _png(NYU / "depth_filled_mm.png"), _png(NYU / "label13.png"))
    for split in ("train", "val"):  # val's labels came through the 40 -> 13 map: the same
        for key, value in expected.items():
            assert np.array_equal(np.load(root / split / key / "0.npy"), value), (split, key)
    meta = json.loads((root / "densemtl.json").read_text())
    assert meta["samples"] == {"train": 1, "val": 1} and meta["size"] == [288, 384]
    assert main(["data", "check", "--dataset", "nyuv2", "--data-root", str(root), "--quiet"]) == 0
    # never over an existing dataset unless asked; --overwrite replaces a conversion
    assert main(["data", "convert", "nyuv2", str(nyu_raw), "--out", str(root), "--size", "48x64", "--quiet"]) == 2
    assert "already exists; refusing to overwrite it (pass --overwrite" in capsys.readouterr().err
    assert np.load(root / "train" / "image" / "0.npy").shape == (288, 384, 3)
    args = ["data", "convert", "nyuv2", str(nyu_raw), "--out", str(root), "--size", "48x64", "--overwrite", "--quiet"]
    assert main(args) == 0
    assert np.load(root / "train" / "image" / "0.npy").shape == (48, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ny", "nyraw"]  # no temporary folder left
    (tmp_path / "ny-link").symlink_to(root)  # --overwrite never removes through a link (issue 21)
    args[args.index(str(root))] = str(tmp_path / "ny-link")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err == f"densemtl: error: --out {tmp_path / 'ny-link'} is a symbolic link; refusing to write through it "
        "(remove it or choose another path)\n"
    )
    assert np.load(root / "train" / "image" / "0.npy").shape == (48, 64, 3)


def test_cityscapes_trains(cs_raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "cs"
    assert main(["data", "convert", "cityscapes", str(cs_raw), "--out", str(root), "--size", "32x64", "--quiet"]) == 0
    rgb, ids = _png(CS / f"{STEM}_leftImg8bit.png"), _png(CS / f"{STEM}_gtFine_labelIds.png")
    for classes in (7, 19):
        expected = cityscapes_frame(rgb, ids, classes, (32, 64))
        assert np.array_equal(np.load(root / "val" / f"label_{classes}" / "0.npy"), expected["label"])
    assert not np.load(root / "train" / "depth" / "0.npy").any()  # no disparity: invalid depth
    args = ["train", "--dataset", "cityscapes", "--data-root", str(root), "--num-classes", "19", "--size", "32x64"]
    args += ["--epochs", "1", "--batch-size", "1", "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
    assert main([*args, "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["num_classes"] == 19


def test_bad_input_is_one_line(nyu_raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    (nyu_raw / "train" / "1407" / "depth_filled_mm.png").write_bytes(b"not a png")
    cases = [
        (["nyuv2", str(tmp_path / "nothere")], "RAW " + str(tmp_path / "nothere") + " does not exist"),
        (["cityscapes", str(nyu_raw)], "has no leftImg8bit/ folder"),
        (["nyuv2", str(nyu_raw)], "depth_filled_mm.png: cannot be read as an image"),
        (["nyuv2", str(nyu_raw), "--size", "12"], "--size '12' is not a size"),
        (["pascal", str(nyu_raw)], "invalid choice: 'pascal'"),
    ]
    for args, message in cases:
        try:
            code = main(["data", "convert", *args, "--out", str(out), "--quiet"])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (nyu_raw / "train" / "1407" / "depth_filled_mm.png").unlink()
    (nyu_raw / "train" / "1407" / "depth_raw_mm.png").unlink()
    assert main(["data", "convert", "nyuv2", str(nyu_raw), "--out", str(out)]) == 2
    assert "1407: no depth_mm.png or depth_filled_mm.png or depth_raw_mm.png" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nyraw"]  # nothing written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["data", "convert", "nyuv2", str(nyu_raw), "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "which is not a converted dataset" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
