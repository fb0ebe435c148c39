"""Data that cannot be what it claims: refused when the dataset is opened (its first samples, or a
split none of whose files holds anything to learn), when a later sample loads, and by ``data check``
(every file), in one line naming the file or folder; one odd file is a warning of ``data check``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from densemtl import data
from densemtl.cli.main import main
from densemtl.data.writer import synthesize
from densemtl.data.writer_nyud import write_nyud
from densemtl.data.writer_pascal import write_pascal
from densemtl.errors import DataError

H, W = 32, 40
TINY = ["--epochs", "1", "--batch-size", "2", "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("claims")
    write_nyud(root / "nyud", 4, 2, (H, W), 0)
    write_pascal(root / "pascal", 4, 2, (H, W), 0)
    synthesize(root / "mtan", 4, 2, (H, W), 0)
    return {"nyud": root / "nyud", "pascal_context": root / "pascal", "nyuv2": root / "mtan"}


@pytest.fixture
def copy(written: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    return {name: Path(shutil.copytree(src, tmp_path / name)) for name, src in written.items()}


def _ids(root: Path, listing: str) -> list[str]:
    return (root / listing).read_text().split()


def _check(name: str, root: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", "check", "--dataset", name, "--data-root", str(root), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def _grey_png(path: Path, value: int = 128, channels: int = 3) -> None:
    with Image.open(path) as im:
        w, h = im.size
    shape = (h, w, channels) if channels == 3 else (h, w)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


# -- NYUD-MT -------------------------------------------------------------------------------------
def test_nyud_normals_all_grey_in_a_split_are_refused(copy: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = copy["nyud"]
    for ident in _ids(root, "gt_sets/train.txt"):
        _grey_png(root / "normals" / f"{ident}.png")
    with pytest.raises(DataError) as info:
        data.create("nyud", "train", root=str(root), size=(H, W))
    want = f"{root / 'normals'}: none of the 4 normal files of the train split holds any valid normal"
    assert str(info.value).startswith(want) and "would train on nothing" in str(info.value)
    code, _, err = _check("nyud", root, capsys)
    assert code == 2 and err.startswith(f"densemtl: error: {want}") and err.count("\n") == 1
    out = root.parent / "run"
    capsys.readouterr()
    args = ["train", "--dataset", "nyud", "--data-root", str(root), "--size", "32x40", *TINY, "--out", str(out)]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"densemtl: error: {want}") and not out.exists()


def test_one_grey_normal_map_is_a_warning(copy: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = copy["nyud"]
    first = _ids(root, "gt_sets/train.txt")[0]
    _grey_png(root / "normals" / f"{first}.png")  # sample 0 itself: the opening reads on to sample 1
    assert len(data.create("nyud", "train", root=str(root), size=(H, W))) == 4
    code, out, _ = _check("nyud", root, capsys)
    assert code == 0 and "  warning: 1 of 4 normal files hold no valid normal" in out


@pytest.mark.parametrize(
    ("folder", "value", "words"),
    [
        ("edge", 0, "none of the 4 edge files of the train split holds any edge pixel"),
        ("segmentation", 0, "none of the 4 seg files of the train split holds any labelled pixel"),
        ("edge", 255, "100% of the pixels are edges; edges are thin lines of 255 on 0 (an inverted map?)"),
    ],
)
def test_nyud_empty_or_inverted_maps_are_refused(copy: dict[str, Path], folder: str, value: int, words: str) -> None:
    root = copy["nyud"]
    for ident in _ids(root, "gt_sets/train.txt"):
        _grey_png(root / folder / f"{ident}.png", value, channels=1)
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        data.create("nyud", "train", root=str(root), size=(H, W))


# -- PASCAL-Context ------------------------------------------------------------------------------
def _saliency_01(root: Path, ident: str) -> Path:
    path = root / "sal_distill" / f"{ident}.png"
    with Image.open(path) as im:
        v = np.array(im)
    Image.fromarray((v > 127).astype(np.uint8)).save(path)
    return path


def test_pascal_saliency_stored_as_0_1_is_refused(copy: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = copy["pascal_context"]
    train = _ids(root, "ImageSets/Context/train.txt")
    for ident in train:
        _saliency_01(root, ident)
    with pytest.raises(DataError) as info:
        data.create("pascal_context", "train", root=str(root))
    assert str(info.value).startswith(f"{root / 'sal_distill' / train[0]}.png: saliency holds only 0 and 1")
    code, _, err = _check("pascal_context", root, capsys)
    assert code == 2 and err.startswith(f"densemtl: error: {root / 'sal_distill' / train[0]}.png: ")


def test_pascal_saliency_late_file_is_found_by_data_check(written: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    root = Path(shutil.copytree(written["pascal_context"], tmp_path / "p"))
    late = _saliency_01(root, _ids(root, "ImageSets/Context/val.txt")[1])
    assert len(data.create("pascal_context", "val", root=str(root))) == 2  # sample 1 is not read when opened
    code, _, err = _check("pascal_context", root, capsys)
    assert code == 2 and err == (
        f"densemtl: error: {late}: saliency holds only 0 and 1; the layout stores it as 0..255 (v/255 > 0.5 is "
        "salient), so every pixel would read as background (multiply by 255)\n"
    )


def test_pascal_no_salient_pixel_in_a_split_is_refused(written: dict[str, Path], tmp_path: Path) -> None:
    root = Path(shutil.copytree(written["pascal_context"], tmp_path / "p"))
    for ident in _ids(root, "ImageSets/Context/val.txt"):
        _grey_png(root / "sal_distill" / f"{ident}.png", 20, channels=1)
    with pytest.raises(DataError, match="none of the 2 saliency files of the val split holds any salient pixel"):
        data.create("pascal_context", "val", root=str(root))


def _parts_mat(path: Path, class_ind: object, mask: np.ndarray | None = None) -> None:
    with Image.open(path.parent.parent / "JPEGImages" / f"{path.stem}.jpg") as im:
        w, h = im.size
    head = np.zeros((h, w), np.uint8) if mask is None else mask
    head[:4] = 1 if mask is None else head[:4]
    part = np.empty((1, 1), dtype=[("part_name", object), ("mask", object)])
    part[0, 0]["part_name"], part[0, 0]["mask"] = np.array(["head"]), head
    obj = np.empty((1, 1), dtype=[("class_ind", object), ("mask", object), ("parts", object)])
    obj[0, 0]["class_ind"], obj[0, 0]["mask"], obj[0, 0]["parts"] = np.array([[class_ind]]), np.ones((h, w)), part
    anno = np.empty((1, 1), dtype=[("objects", object)])
    anno[0, 0]["objects"] = obj
    savemat(path, {"anno": anno})


@pytest.mark.parametrize(("value", "shown"), [("abc", "'abc'"), (float("nan"), "nan"), (2.5, "2.5"), (0, "0")])
def test_parts_class_ind_at_open_is_one_line(written: dict[str, Path], tmp_path: Path, value: object,
                                             shown: str) -> None:  # fmt: skip
    root = Path(shutil.copytree(written["pascal_context"], tmp_path / "p"))
    path = root / "human_parts" / f"{_ids(root, 'ImageSets/Context/train.txt')[0]}.mat"
    _parts_mat(path, value)
    with pytest.raises(DataError) as info:
        data.create("pascal_context", "train", root=str(root))
    assert str(info.value) == f"{path}: anno.objects(1).class_ind must be one VOC class 1..20, got {shown}"


@pytest.mark.parametrize("workers", [0, 1])
def test_parts_class_ind_in_sample_3_stops_training_and_data_check(
    written: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, workers: int
) -> None:
    root = Path(shutil.copytree(written["pascal_context"], tmp_path / "p"))
    path = root / "human_parts" / f"{_ids(root, 'ImageSets/Context/train.txt')[3]}.mat"
    _parts_mat(path, "abc")
    want = f"densemtl: error: {path}: anno.objects(1).class_ind must be one VOC class 1..20, got 'abc'\n"
    out = tmp_path / "run"
    args = ["train", "--dataset", "pascal_context", "--data-root", str(root), "--size", "32x40", "--tasks", "seg,parts"]
    capsys.readouterr()
    assert main([*args, *TINY, "--workers", str(workers), "--out", str(out)]) == 2
    assert capsys.readouterr().err.endswith(want)
    code, _, err = _check("pascal_context", root, capsys)
    assert code == 2 and err == want


def test_parts_masks_are_checked(written: dict[str, Path], tmp_path: Path) -> None:
    root = Path(shutil.copytree(written["pascal_context"], tmp_path / "p"))
    path = root / "human_parts" / f"{_ids(root, 'ImageSets/Context/train.txt')[0]}.mat"
    _parts_mat(path, 15, np.full((3, 3), 1, np.uint8))
    with pytest.raises(DataError, match=r"anno\.objects\(1\)\.parts\(1\)\.mask 3×3 differs from the image"):
        data.create("pascal_context", "train", root=str(root))


# -- MTAN ----------------------------------------------------------------------------------------
def test_mtan_images_in_0_255_and_depth_in_millimetres_are_refused(copy: dict[str, Path]) -> None:
    root = copy["nyuv2"]
    p = root / "train" / "image" / "0.npy"
    np.save(p, np.load(p) * 255)
    words = r"image values must be in 0\.\.1, found .*\(stored as 0\.\.255\? divide by 255\)"
    with pytest.raises(DataError, match=words):
        data.create("nyuv2", "train", root=str(root))
    q = root / "val" / "depth" / "0.npy"
    np.save(q, np.load(q) * 1000)
    with pytest.raises(DataError, match=r"depth must be metres, found .* \(millimetres\? divide by 1000\)"):
        data.create("nyuv2", "val", root=str(root))


def test_mtan_normals_all_invalid_are_a_warning(copy: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = copy["nyuv2"]
    for p in (root / "val" / "normal").glob("*.npy"):
        np.save(p, np.zeros_like(np.load(p)))  # converted NYUv2 frames carry no normals: allowed
    code, out, _ = _check("nyuv2", root, capsys)
    assert code == 0 and "  warning: 2 of 2 normal files hold no valid normal" in out


# -- a plugin dataset ----------------------------------------------------------------------------
class Plugin(torch.utils.data.Dataset):
    tasks = ("seg", "depth")
    num_classes = 3
    size = (16, 16)

    def __init__(self, bad: str) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"image": torch.rand(3, 16, 16), "seg": torch.zeros(16, 16, dtype=torch.long),
                  "depth": torch.ones(1, 16, 16)}  # fmt: skip
        if self.bad == "image-2d":
            sample["image"] = torch.rand(16, 16)
        elif self.bad == "seg-float":
            sample["seg"] = torch.zeros(16, 16)
        elif self.bad == "no-depth":
            del sample["depth"]
        elif self.bad == "depth-size":
            sample["depth"] = torch.ones(1, 8, 8)
        return sample

    def set_epoch(self, epoch: int) -> None:
        pass


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("image-2d", "'image' must be a 3×H×W float tensor in 0..1, got Tensor (16, 16) float32"),
        ("seg-float", "'seg' must be an H×W integer tensor at the image's 16×16, got Tensor (16, 16) float32"),
        ("no-depth", "no key 'depth' (has image, seg)"),
        ("depth-size", "'depth' must be a 1×H×W float tensor at the image's 16×16, got Tensor (1, 8, 8) float32"),
    ],
)
def test_a_plugin_dataset_with_a_bad_sample_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, bad: str, words: str
) -> None:
    def factory(split: str, root: str | None = None, size: object = None, augment: bool = False, seed: int = 0,
                n: int | None = None, num_classes: int | None = None) -> Plugin:  # fmt: skip
        return Plugin(bad)

    data.register("claims_plugin")(factory)
    try:
        out = tmp_path / "run"
        capsys.readouterr()
        assert main(["train", "--dataset", "claims_plugin", "--size", "16x16", *TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"densemtl: error: dataset 'claims_plugin' (train split, sample 0): {words}\n"
        assert not out.exists()
    finally:
        data.DATASETS.unregister("claims_plugin")


# -- values read as invalid pixels: named file by file by data check (issue 21, second probe) -----
def test_data_check_names_each_file_with_unusable_readings(
    copy: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    root = copy["nyuv2"]
    depth, normal = root / "train" / "depth" / "1.npy", root / "train" / "normal" / "2.npy"
    d = np.load(depth)
    d.flat[:3] = [np.inf, -2.0, -1.0]
    np.save(depth, d)
    n = np.load(normal)
    n.flat[5] = np.nan
    np.save(normal, n)
    code, _, err = _check("nyuv2", root, capsys)
    assert code == 0
    assert err.splitlines() == [
        f"densemtl: warning: {depth}: depth holds 1 infinite and 2 negative values, read as invalid pixels",
        f"densemtl: warning: {normal}: normal holds 1 NaN value, read as invalid pixels",
    ]


def test_data_check_names_nyud_nan_depth_and_val_ids_in_train(
    copy: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    root = copy["nyud"]
    train = _ids(root, "gt_sets/train.txt")
    depth = root / "depth" / f"{train[1]}.npy"
    d = np.load(depth).astype(np.float32)
    d.flat[5] = np.nan
    np.save(depth, d)
    (root / "gt_sets" / "val.txt").write_text(f"{train[0]}\n{_ids(root, 'gt_sets/val.txt')[1]}\n")
    code, _, err = _check("nyud", root, capsys)
    assert code == 0
    assert err.splitlines() == [
        f"densemtl: warning: 1 of the 2 val ids of {root} are also train ids ('{train[0]}'): "
        "validation would score images the model trained on",
        f"densemtl: warning: {depth}: depth holds 1 NaN value, read as invalid pixels",
    ]


def test_mtan_label_hxwx1_is_the_same_map(copy: dict[str, Path]) -> None:
    root = copy["nyuv2"]
    before = data.create("nyuv2", "train", root=str(root))[1]["seg"]
    p = root / "train" / "label" / "1.npy"
    np.save(p, np.load(p)[..., None])
    assert torch.equal(data.create("nyuv2", "train", root=str(root))[1]["seg"], before)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            {"num_classes": 5, "class_names": None},
            "'num_classes' is 5, but pascal_context has 21 classes (background and the 20 VOC classes)",
        ),
        ({"class_names": ["a", "b"]}, "'class_names' has 2 names for its 21 classes ('num_classes')"),
        ({"size": "big"}, "'size' must be [H, W], got 'big'"),
    ],
)
def test_a_densemtl_json_that_contradicts_the_data_is_refused(copy: dict[str, Path], edit: dict, words: str) -> None:
    import json

    path = copy["pascal_context"] / "densemtl.json"
    meta = {k: v for k, v in {**json.loads(path.read_text()), **edit}.items() if v is not None}
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        data.create("pascal_context", "train", root=str(path.parent))
    assert str(info.value) == f"{path}: {words}"


def test_a_densemtl_json_folder_is_refused(copy: dict[str, Path]) -> None:
    path = copy["nyuv2"] / "densemtl.json"
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match="densemtl.json: not a file"):
        data.create("nyuv2", "train", root=str(path.parent))


@pytest.mark.parametrize(
    ("mask", "words"),
    [(np.ones((5, 5)), "anno.objects(1).mask 5×5 differs from the image (32×40)"),
     (np.array(["x"]), "anno.objects(1).mask must be an H×W 0/1 mask, got 'x'")],
)  # fmt: skip
def test_parts_object_masks_are_checked(written: dict[str, Path], tmp_path: Path, mask: np.ndarray, words: str) -> None:
    from scipy.io import loadmat

    root = Path(shutil.copytree(written["pascal_context"], tmp_path / "p"))
    path = root / "human_parts" / f"{_ids(root, 'ImageSets/Context/train.txt')[0]}.mat"
    mat = loadmat(path)
    mat["anno"][0, 0]["objects"][0, 0]["mask"] = mask
    savemat(path, {"anno": mat["anno"]})
    with pytest.raises(DataError) as info:
        data.create("pascal_context", "train", root=str(root))
    assert str(info.value) == f"{path}: {words}"


def test_pascal_grey_saliency_saved_as_rgb_is_read_as_grey(copy: dict[str, Path]) -> None:
    root = copy["pascal_context"]
    ident = _ids(root, "ImageSets/Context/train.txt")[0]
    path = root / "sal_distill" / f"{ident}.png"
    before = data.create("pascal_context", "train", root=str(root))[0]["saliency"]
    grey = np.asarray(Image.open(path))
    Image.fromarray(np.stack([grey] * 3, -1)).save(path)
    assert torch.equal(data.create("pascal_context", "train", root=str(root))[0]["saliency"], before)
    colour = np.stack([grey, grey, 255 - grey], -1)
    Image.fromarray(colour).save(path)
    with pytest.raises(DataError, match="must be a grey image; its RGB channels differ"):
        data.create("pascal_context", "train", root=str(root))
