"""NYUD-MT (``--dataset nyud``): files written by ``data synth --layout nyud``, validation errors,
fitting, flips, the real NYUv2 frame converted, and a tiny training run."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.cli.main import main
from densemtl.data import available, create
from densemtl.data.nyud import NYUDDataset
from densemtl.data.preprocess import label_edges, nyud_frame
from densemtl.data.writer_nyud import write_nyud, write_nyud_sample, write_split
from densemtl.errors import ConfigError, DataError

SIZE = (32, 40)
TASKS = "seg,depth,normal,edge"
NYU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nyuv2-test-1407"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nyud") / "d"
    args = ["data", "synth", "--layout", "nyud", "--out", str(root), "--n-train", "4", "--n-val", "2"]
    assert main([*args, "--size", "32x40"]) == 0
    return root


@pytest.fixture
def root(synth: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth, tmp_path / "copy"))


def test_layout_and_roundtrip(synth: Path) -> None:
    assert "nyud" in available()
    assert sorted(p.name for p in synth.iterdir()) == ["depth", "edge", "gt_sets", "images", "normals", "segmentation"]
    assert (synth / "gt_sets" / "val.txt").read_text() == "0004\n0005\n"
    with Image.open(synth / "edge" / "0001.png") as im:
        assert im.mode == "L" and set(np.unique(np.array(im)).tolist()) == {0, 255}
    ds = create("nyud", "train", root=str(synth), size=SIZE)
    assert len(ds) == 4 and ds.tasks == ("seg", "depth", "normal", "edge") and ds.num_classes == 40
    ref = create("synthetic", "train", n=4, size=SIZE, seed=0, tasks=TASKS)
    for i in (0, 3):
        s, r = ds[i], ref[i]
        assert (s["image"] - r["image"]).abs().max() <= 0.5 / 255 + 1e-6
        assert torch.equal(s["seg"], r["seg"]) and torch.equal(s["depth"], r["depth"])
        assert torch.equal(s["edge"], r["edge"]) and s["edge"].sum() > 0
        valid = r["normal"].norm(dim=0) > 0
        assert torch.equal(s["normal"].norm(dim=0) > 0, valid)
        assert (s["normal"] - r["normal"]).abs().max() < 0.01
    val = create("nyud", "val", root=str(synth), size=SIZE, tasks="seg,edge")
    assert len(val) == 2 and set(val[1]) == {"image", "seg", "edge"}


def test_default_size_pads_centred(synth: Path) -> None:
    ds = create("nyud", "val", root=str(synth))
    assert ds.size == (448, 576)
    s, small = ds[0], create("nyud", "val", root=str(synth), size=SIZE)[0]
    top, left = (448 - 32) // 2, (576 - 40) // 2
    inner = (slice(top, top + 32), slice(left, left + 40))
    for key, fill in (("seg", -1), ("depth", 0), ("normal", 0), ("edge", -1)):
        assert torch.equal(s[key][..., inner[0], inner[1]], small[key])
        outside = s[key].clone()
        outside[..., inner[0], inner[1]] = fill
        assert torch.all(outside == fill), key
    assert torch.allclose(s["image"][:, 0, 0], torch.tensor([0.485, 0.456, 0.406]))
    cropped = create("nyud", "val", root=str(synth), size=(16, 20))[0]
    assert torch.equal(cropped["seg"], small["seg"][8:24, 10:30])
    resized = create("nyud", "val", root=str(synth), size=(16, 20), fit="resize")[0]
    norms = resized["normal"].norm(dim=0)
    assert torch.all((norms == 0) | ((norms - 1).abs() < 1e-5))
    assert set(resized["seg"].unique().tolist()) <= set(small["seg"].unique().tolist())


def test_varying_sizes(root: Path) -> None:
    for folder in ("images", "segmentation", "normals", "edge"):  # sample 0003 becomes 30×36
        path = root / folder / "0003.png"
        Image.fromarray(np.array(Image.open(path))[:30, :36]).save(path)
    np.save(root / "depth" / "0003.npy", np.load(root / "depth" / "0003.npy")[:30, :36])
    ds = create("nyud", "train", root=str(root), size=SIZE)
    s = ds[3]
    assert s["image"].shape == (3, *SIZE) and (s["seg"][0] == -1).all() and (s["edge"][:, :, -2:] == -1).all()
    assert ds[0]["seg"].shape == SIZE


def test_flip_consistency(synth: Path) -> None:
    plain = create("nyud", "train", root=str(synth), size=SIZE)[1]
    ds = NYUDDataset(synth, "train", size=SIZE, augment=True, scales=(1.0,), seed=5)
    flips = 0
    for epoch in range(8):
        ds.set_epoch(epoch)
        s = ds[1]
        if torch.equal(s["image"], plain["image"]):
            assert all(torch.equal(s[k], plain[k]) for k in plain)
            continue
        flips += 1
        assert torch.equal(s["image"], plain["image"].flip(-1))
        for key in ("seg", "depth", "edge"):
            assert torch.equal(s[key], plain[key].flip(-1)), key
        assert torch.equal(s["normal"][0], -plain["normal"][0].flip(-1))
        assert torch.equal(s["normal"][1:], plain["normal"][1:].flip(-1))
    assert 0 < flips < 8
    zoom = NYUDDataset(synth, "train", size=SIZE, augment=True, scales=(2.0,))[0]
    assert set(zoom["edge"].unique().tolist()) <= {0.0, 1.0} and zoom["seg"].dtype == torch.long


def _grey(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _break_size(root: Path) -> Path:
    path = root / "edge" / "0002.png"
    _grey(path, np.zeros((32, 41)))
    return path


def _break_label(root: Path) -> Path:
    path = root / "segmentation" / "0001.png"
    lab = np.array(Image.open(path))
    lab[3, 3] = 41
    _grey(path, lab)
    return path


def _break_missing(root: Path) -> Path:
    path = root / "normals" / "0003.png"
    path.unlink()
    return path


def _break_depth(root: Path) -> Path:
    path = root / "depth" / "0000.npy"
    np.save(path, np.load(path) * 1000)
    return path


def _break_edge(root: Path) -> Path:
    path = root / "edge" / "0000.png"
    _grey(path, np.array(Image.open(path)) // 255)
    return path


def _break_image(root: Path) -> Path:
    path = root / "images" / "0001.png"
    path.write_bytes(b"not a png")
    return path


def _break_ids(root: Path) -> Path:
    path = root / "gt_sets" / "train.txt"
    path.write_text("0000\n0001\n0000\n")
    return path


@pytest.mark.parametrize(
    ("breaker", "words"),
    [
        (_break_missing, "missing"),
        (_break_size, "size 32×41 differs"),
        (_break_label, "..41"),
        (_break_depth, "millimetres"),
        (_break_edge, "0/255"),
        (_break_ids, "repeats line 1"),
        (_break_image, "not a readable image"),
    ],
)
def test_errors_are_one_line(root: Path, breaker, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = breaker(root)
    assert main(["data", "check", "--dataset", "nyud", "--data-root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and words in err, err


def test_open_errors(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-root is required"):
        create("nyud", "val")
    with pytest.raises(DataError, match="gt_sets"):
        create("nyud", "val", root=str(tmp_path))
    with pytest.raises(ConfigError, match="40 classes"):
        create("nyud", "val", root=str(synth), num_classes=13)
    with pytest.raises(ConfigError, match="unknown task 'parts'"):
        create("nyud", "val", root=str(synth), tasks="seg,parts")
    with pytest.raises(ConfigError, match="n=3"):
        create("nyud", "val", root=str(synth), n=3)
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_nyud(synth, 1, 1, SIZE, 0)


def test_label_edges() -> None:
    lab = np.zeros((4, 5), np.uint8)
    lab[:, 3:] = 7
    edge = label_edges(lab)
    assert edge[:, 2].all() and edge.sum() == 4  # one pixel thin, on the left of the boundary


@pytest.mark.skipif(not NYU.is_dir(), reason=f"real NYUv2 frame not found at {NYU}")
def test_real_frame(tmp_path: Path) -> None:
    def png(name: str) -> np.ndarray:
        with Image.open(NYU / name) as im:
            return np.array(im, dtype=np.uint16 if im.mode.startswith("I;16") else np.uint8)

    files = nyud_frame(png("rgb.png"), png("depth_filled_mm.png"), png("label40.png"))
    assert files["edge"].dtype == np.uint8 and 0.01 < (files["edge"] == 255).mean() < 0.1
    write_nyud_sample(files, tmp_path, "1407")
    write_split(tmp_path, "val", ["1407"])
    assert main(["data", "check", "--dataset", "nyud", "--data-root", str(tmp_path), "--quiet"]) == 2  # no train
    with pytest.raises(DataError, match="none of the 1 normal files of the val split holds any valid normal"):
        create("nyud", "val", root=str(tmp_path))  # no normals for this frame: grey 128, invalid everywhere
    ds = create("nyud", "val", root=str(tmp_path), tasks="seg,depth,edge")
    s = ds[0]
    assert s["image"].shape == (3, 448, 576) and ds.size == (448, 576)
    inner = (slice(11, 436), slice(8, 568))  # 425×560 centred
    seg = s["seg"][inner]
    label = torch.from_numpy(png("label40.png").astype(np.int64)) - 1
    assert torch.equal(seg, label) and seg.max() <= 39 and (seg == -1).any()
    depth = s["depth"][0][inner]
    assert depth.min() >= 1.9 and depth.max() <= 9.5
    edge = s["edge"][0]
    assert torch.equal(edge[inner], torch.from_numpy(label_edges(png("label40.png")).astype(np.float32)))
    assert (edge == -1).sum() == 448 * 576 - 425 * 560  # the padding is ignored
    assert "normal" not in s


def test_train(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--dataset", "nyud", "--data-root", str(synth), "--out", str(run)]
    args += ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1"]
    args += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert all(np.isfinite(v) for v in last["train_loss"].values()) and set(last["train_loss"]) == set(TASKS.split(","))
    assert set(last["val"]["edge"]) == {"ods_f", "ois_f", "loss"}
    assert all(np.isfinite(v) for v in last["val"]["edge"].values())


def test_synth_layout_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType("densemtl.data.writer_pascal")
    fake.write_pascal = lambda *args: calls.append(args)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "densemtl.data.writer_pascal", fake)
    args = ["data", "synth", "--out", str(tmp_path / "p"), "--n-train", "3", "--n-val", "1", "--size", "16x24"]
    assert main([*args, "--layout", "pascal_context", "--seed", "2"]) == 0
    assert calls == [(str(tmp_path / "p"), 3, 1, (16, 24), 2)]
    with pytest.raises(SystemExit):
        main([*args, "--layout", "cityscapes"])
