"""PASCAL-Context in the PASCAL-MT layout: files written by ``write_pascal``, loaded back and checked."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from densemtl.cli.main import main
from densemtl.data import create
from densemtl.data.pascal_context import NORMAL_VALID_LABELS, PascalContext, label_edges, parts_map
from densemtl.data.scenes import CYLINDER, SPHERE, render_scene
from densemtl.data.writer_pascal import CONTEXT_OF_SYNTHETIC, write_pascal
from densemtl.errors import ConfigError, DataError

H, W = 32, 40


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pascal") / "data"
    write_pascal(root, 4, 2, (H, W), 0)
    return root


@pytest.fixture
def root(written: Path, tmp_path: Path) -> Path:
    """A private copy of the written dataset, free to break."""
    return Path(shutil.copytree(written, tmp_path / "data"))


def _id(root: Path, split: str = "train", i: int = 0) -> str:
    return (root / "ImageSets" / "Context" / f"{split}.txt").read_text().split()[i]


def test_layout_and_meta(written: Path) -> None:
    ident = _id(written)
    for rel in (
        f"JPEGImages/{ident}.jpg",
        f"semseg/pascal-context/{ident}.png",
        f"human_parts/{ident}.mat",
        f"sal_distill/{ident}.png",
        f"normals_distill/{ident}.png",
        f"pascal-context/trainval/{ident}.mat",
    ):
        assert (written / rel).is_file(), rel
    assert len(_ids := (written / "ImageSets/Context/val.txt").read_text().split()) == 2
    assert not set(_ids) & set((written / "ImageSets/Context/train.txt").read_text().split())
    meta = json.loads((written / "densemtl.json").read_text())
    assert meta["size"] == [H, W] and meta["num_classes"] == 21


def test_round_trip(written: Path) -> None:
    ds = create("pascal_context", "train", root=str(written))
    assert len(ds) == 4 and ds.tasks == ("seg", "parts", "saliency", "normal", "edge")
    assert ds.num_classes == 21 and ds.size == (H, W)  # the size from densemtl.json
    scene = render_scene((0, 0, 0), (H, W))  # what image 0 of train was written from
    s = ds[0]
    assert s["image"].shape == (3, H, W) and 0 <= float(s["image"].min()) <= float(s["image"].max()) <= 1
    rgb = torch.from_numpy(scene["image"]).permute(2, 0, 1)
    assert (s["image"] - rgb).abs().mean() < 0.03  # JPEG
    person = torch.from_numpy(scene["seg"] == CYLINDER)
    assert person.any()
    assert torch.equal(s["seg"] == 15, person) and s["seg"].dtype == torch.long
    assert torch.equal(s["saliency"][0], torch.from_numpy(scene["instance"] > 0).float())
    assert torch.equal(s["parts"] > 0, person) and int(s["parts"].max()) == 6 and int(s["parts"].min()) == 0
    labels = np.asarray(CONTEXT_OF_SYNTHETIC)[scene["seg"]]
    assert torch.equal(s["edge"][0], torch.from_numpy(label_edges(labels)))
    valid = torch.from_numpy(np.isin(labels, list(NORMAL_VALID_LABELS)))
    assert not valid[torch.from_numpy(scene["seg"] == SPHERE)].any()  # potted plants: no normals
    n = s["normal"]
    assert torch.equal(n.abs().sum(0) > 0, valid)
    assert torch.allclose(n.norm(dim=0)[valid], torch.ones(()), atol=1e-5)
    truth = torch.from_numpy(scene["normal"]).permute(2, 0, 1)
    assert (n - truth)[:, valid].abs().max() < 0.02  # 8-bit quantisation


def test_padding_and_fit(written: Path) -> None:
    ds = create("pascal_context", "train", root=str(written))
    s = ds[1]  # stored 28×40: padded by 2 rows above and below
    assert ds._stored[1] == (28, 40)
    for key, fill in (("seg", -1), ("parts", -1), ("saliency", 255), ("edge", 255)):
        x = s[key]
        assert (x[..., :2, :] == fill).all() and (x[..., -2:, :] == fill).all(), key
        assert not (x[..., 2:-2, :] == fill).any(), key
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]  # the ImageNet mean: 0 once normalised
    assert torch.equal(s["image"][:, :2], mean.expand(3, 2, W)) and (s["normal"][:, :2] == 0).all()
    small = create("pascal_context", "train", root=str(written), size=(24, 30))
    assert small[0]["seg"].shape == (24, 30)
    assert torch.equal(small[0]["seg"], ds[0]["seg"][4:28, 5:35])  # centre crop
    fitted = create("pascal_context", "train", root=str(written), size=(16, 20), fit="resize")
    f = fitted[0]
    assert f["image"].shape == (3, 16, 20) and f["parts"].shape == (16, 20)
    assert set(f["seg"].unique().tolist()) <= set(ds[0]["seg"].unique().tolist())
    norm = f["normal"].norm(dim=0)
    assert torch.allclose(norm[norm > 0], torch.ones(()), atol=1e-5)
    with pytest.raises(ConfigError, match="fit"):
        create("pascal_context", "train", root=str(written), fit="stretch")


def test_task_subset(root: Path) -> None:
    shutil.rmtree(root / "normals_distill")
    shutil.rmtree(root / "human_parts")
    ds = create("pascal_context", "val", root=str(root), tasks="edge,saliency")
    assert ds.tasks == ("edge", "saliency") and set(ds[0]) == {"image", "edge", "saliency"}
    with pytest.raises(DataError, match=r"human_parts: folder missing \(needed for task parts\)"):
        create("pascal_context", "val", root=str(root))
    with pytest.raises(ConfigError, match="depth"):
        create("pascal_context", "val", root=str(root), tasks="edge,depth")


def test_flip_consistency(written: Path) -> None:
    plain = PascalContext(written, "train", size=(H, W))
    aug = PascalContext(written, "train", size=(H, W), augment=True, scales=(1.0,))
    ref = plain[0]
    seen = set()
    for epoch in range(12):
        aug.set_epoch(epoch)
        s = aug[0]
        flipped = not torch.equal(s["image"], ref["image"])
        seen.add(flipped)
        for key, x in ref.items():
            want = x.flip(-1) if flipped else x
            if key == "normal" and flipped:
                want = want.clone()
                want[0] = -want[0]
            assert torch.equal(s[key], want), (key, epoch)
    assert seen == {True, False}


def _parts_anno(objects: list[tuple[int, list[tuple[str, np.ndarray]]]]) -> dict:
    rec = np.empty((1, len(objects)), dtype=[("class_ind", object), ("mask", object), ("parts", object)])
    for i, (cls, parts) in enumerate(objects):
        pa = np.empty((1, len(parts)), dtype=[("part_name", object), ("mask", object)])
        for j, (name, mask) in enumerate(parts):
            pa[0, j]["part_name"], pa[0, j]["mask"] = np.array([name]), mask.astype(np.uint8)
        rec[0, i]["class_ind"] = np.array([[cls]])
        rec[0, i]["mask"] = np.ones((4, 5), np.uint8)
        rec[0, i]["parts"] = pa if parts else np.zeros((0, 0))
    anno = np.empty((1, 1), dtype=[("objects", object)])
    anno[0, 0]["objects"] = rec
    return {"anno": anno}


def test_parts_map(tmp_path: Path) -> None:
    from scipy.io import loadmat

    def roundtrip(objects: list) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.mat"
        savemat(path, _parts_anno(objects))
        return path

    head = np.zeros((4, 5), bool)
    head[0] = True
    leg = np.zeros((4, 5), bool)
    leg[3, :2] = True
    path = roundtrip([(9, []), (15, [("hair", head), ("llleg", leg)]), (12, [("head", ~head)])])
    got = parts_map(loadmat(path), path, (4, 5))
    want = np.zeros((4, 5), np.int64)
    want[0], want[3, :2] = 1, 6  # a dog's "head" (class 12) is not a person part
    assert np.array_equal(got, want)
    path = roundtrip([(9, []), (15, [])])  # a person without parts, a chair: no part label
    assert (parts_map(loadmat(path), path, (4, 5)) == -1).all()
    path = roundtrip([(15, [("tail", head)])])
    with pytest.raises(DataError, match="unknown person part 'tail'"):
        parts_map(loadmat(path), path, (4, 5))


def test_label_edges() -> None:
    labels = np.ones((6, 8), np.int64)
    labels[:, 4:] = 2
    edges = label_edges(labels)
    assert edges.dtype == np.float32 and edges[:, :3].sum() == 0 and edges[:, 5:].sum() == 0
    # the two-pixel Laplacian band, thinned to one pixel (its end may shorten by one)
    assert (edges.sum(axis=1) <= 1).all() and edges.sum() >= 5
    assert label_edges(np.full((5, 5), 7)).sum() == 0  # mirrored border: no frame


def _check(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["data", "check", "--dataset", "pascal_context", "--data-root", str(root), "--quiet"])
    return code, capsys.readouterr().err.strip()


def test_data_check_ok(written: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "check", "--dataset", "pascal_context", "--data-root", str(written), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "train: 4 samples" in out and "val: 2 samples" in out


def _break(root: Path, kind: str, ident: str) -> Path:
    """Spoil one file of image ``ident`` in the way ``kind`` says; return the file."""
    rel = {
        "missing": f"sal_distill/{ident}.png",
        "class": f"semseg/pascal-context/{ident}.png",
        "size": f"normals_distill/{ident}.png",
        "normals": f"normals_distill/{ident}.png",
        "mat": f"pascal-context/trainval/{ident}.mat",
        "labelmap": f"pascal-context/trainval/{ident}.mat",
        "parts": f"human_parts/{ident}.mat",
        "jpeg": f"JPEGImages/{ident}.jpg",
        "list": "ImageSets/Context/val.txt",
    }[kind]
    path = root / rel
    w, h = Image.open(root / "JPEGImages" / f"{ident}.jpg").size  # odd images are shorter than H
    if kind == "missing":
        path.unlink()
    elif kind == "class":  # a class beyond the 21
        Image.fromarray(np.full((h, w), 30, np.uint8)).save(path)
    elif kind in ("size", "normals"):  # one column too many; colours that are not unit normals
        Image.fromarray(np.full((h, w + (kind == "size"), 3), 128 if kind == "size" else 250, np.uint8)).save(path)
    elif kind in ("mat", "jpeg"):
        path.write_bytes(b"\xff\xd8 truncated" if kind == "jpeg" else b"garbage")
    elif kind == "labelmap":  # beyond the 459 context labels
        savemat(path, {"LabelMap": np.full((h, w), 999)})
    elif kind == "parts":
        savemat(path, {"x": 1})
    else:
        path.write_text(f"{ident}\n{ident}\n")
    return path


REASONS = {
    "missing": "missing (listed in ImageSets/Context/val.txt)",
    "class": "class values must be 0..20 or 255 (ignore), found 30",
    "size": "size 28×41 differs from",
    "normals": "normals must be stored as 255·(n + 1)/2 of unit vectors",
    "mat": "cannot read .mat",
    "labelmap": "LabelMap values must be integers 0..459",
    "parts": "no variable 'anno'",
    "jpeg": "cannot read image",
    "list": "is listed twice",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_data_check_errors(root: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _break(root, kind, _id(root, "val", 1))  # a 28×40 image
    code, err = _check(root, capsys)
    assert code == 2 and "\n" not in err and f"{bad}: " in err and REASONS[kind] in err, err


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-root is required"):
        create("pascal_context", "val")
    with pytest.raises(DataError, match="does not exist"):
        create("pascal_context", "val", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"val\.txt: split list missing"):
        create("pascal_context", "val", root=str(tmp_path))


def test_write_pascal_refuses(written: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not empty"):
        write_pascal(written, 1, 1, (H, W), 0)
    with pytest.raises(ConfigError, match="n_val"):
        write_pascal(tmp_path / "a", 1, 0, (H, W), 0)
    with pytest.raises(ConfigError, match="size"):
        write_pascal(tmp_path / "b", 1, 1, (8, 8), 0)


def test_train_cli(written: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1"]
    args += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet"]
    code = main(["train", "--dataset", "pascal_context", "--data-root", str(written), "--out", str(run), *args])
    assert code == 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last["train_loss"]) == {"seg", "parts", "saliency", "normal", "edge"}
    assert all(math.isfinite(v) for v in last["train_loss"].values())
    val = json.dumps(last["val"])
    for metric in ("ods_f", "ois_f", "max_f", "miou"):
        assert metric in val, metric
    assert "parts" in last["val"] and "saliency" in last["val"] and "edge" in last["val"]
