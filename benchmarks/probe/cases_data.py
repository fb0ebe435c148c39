"""dataset-mtan, dataset-nyud, dataset-pascal: a tiny valid dataset of each layout (written by
``densemtl data synth``) with one thing corrupted per case; ``data check`` or ``train`` reads it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _util import Case, chmod0, edit_json, image, npsave, set_key, truncate, write

CHECK_MTAN = ["data", "check", "--dataset", "nyuv2", "--data-root", "DATA", "--quiet"]
CHECK_NYUD = ["data", "check", "--dataset", "nyud", "--data-root", "NYUD", "--quiet"]
CHECK_PASCAL = ["data", "check", "--dataset", "pascal_context", "--data-root", "PASCAL", "--quiet"]
TRAIN_TAIL = [
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--arch-arg",
    "width=0.125",
    "--arch-arg",
    "depth_stages=3",
    "--out",
    "R",
    "--quiet",
]
TRAIN_MTAN = ["train", "--dataset", "nyuv2", "--data-root", "DATA", *TRAIN_TAIL]
TRAIN_NYUD = ["train", "--dataset", "nyud", "--data-root", "NYUD", "--size", "32x40", *TRAIN_TAIL]
TRAIN_PASCAL = ["train", "--dataset", "pascal_context", "--data-root", "PASCAL", *TRAIN_TAIL]


def npy(rel: str, fn: Callable[[np.ndarray], Any], **kw: Any):
    """Replace the array at ``rel`` by ``fn(array)``."""

    def setup(tmp: Path) -> None:
        path = tmp / rel
        npsave(path, fn(np.load(path)), **kw)

    return setup


def png(rel: str, fn: Callable[[np.ndarray], np.ndarray], mode: str | None = None, **save: Any):
    def setup(tmp: Path) -> None:
        from PIL import Image

        path = tmp / rel
        arr = np.asarray(Image.open(path))
        path.unlink()
        image(path, fn(arr), mode, **save)

    return setup


def text(rel: str, content: str | bytes):
    return lambda tmp: write(tmp / rel, content)


def remove(rel: str):
    def setup(tmp: Path) -> None:
        p = tmp / rel
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    return setup


def to_dir(rel: str):
    """A folder where a file is expected."""

    def setup(tmp: Path) -> None:
        (tmp / rel).unlink()
        (tmp / rel).mkdir()

    return setup


def to_file(rel: str):
    """A file where a folder is expected."""

    def setup(tmp: Path) -> None:
        shutil.rmtree(tmp / rel)
        write(tmp / rel, "not a folder\n")

    return setup


def perm0(rel: str):
    return lambda tmp: chmod0(tmp / rel)


def trunc(rel: str, keep: float = 0.5):
    return lambda tmp: truncate(tmp / rel, keep)


def self_link(rel: str):
    def setup(tmp: Path) -> None:
        (tmp / rel).unlink()
        os.symlink(Path(rel).name, tmp / rel)

    return setup


def meta(root: str, key: str, value: Any):
    return lambda tmp: edit_json(tmp / root / "densemtl.json", lambda d: set_key(d, key, value))


def _nan_at(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32).copy()
    a.flat[5] = np.nan
    return a


def _mtan_gap(tmp: Path) -> None:
    for folder in ("image", "label", "depth", "normal"):
        (tmp / "DATA" / "train" / folder / "2.npy").unlink()


def _mtan_extra_files(tmp: Path) -> None:
    write(tmp / "DATA" / "train" / "image" / ".DS_Store", b"\0\0\0\1Bud1")
    write(tmp / "DATA" / "train" / "notes.txt", "hand-made\n")


def mtan_cases() -> list[Case]:
    C, D = "dataset-mtan", ("DATA",)
    img, lab, dep, nor = (f"DATA/train/{k}/1.npy" for k in ("image", "label", "depth", "normal"))
    return [
        Case("image-uint8", C, CHECK_MTAN, "refuse", npy(img, lambda a: np.round(a * 255).astype(np.uint8)), D),
        Case(
            "image-float-0-255",
            C,
            CHECK_MTAN,
            "refuse",
            npy(img, lambda a: a * 255),
            D,
            note="float32 in 0..255: mis-scaled by 255",
        ),
        Case("image-nan", C, CHECK_MTAN, "refuse", npy(img, _nan_at), D),
        Case("image-4d", C, CHECK_MTAN, "refuse", npy(img, lambda a: a[None]), D),
        Case("image-object", C, CHECK_MTAN, "refuse", npy(img, lambda a: a.astype(object), allow_pickle=True), D),
        Case("image-fortran", C, CHECK_MTAN, "accept", npy(img, np.asfortranarray), D),
        Case("image-float64", C, CHECK_MTAN, "accept", npy(img, lambda a: a.astype(np.float64)), D),
        Case("image-taller-than-label", C, CHECK_MTAN, "refuse", npy(img, lambda a: np.concatenate([a, a])), D),
        Case("label-fractional", C, CHECK_MTAN, "refuse", npy(lab, lambda a: a + 0.5), D),
        Case("label-99", C, CHECK_MTAN, "refuse", npy(lab, lambda a: np.full_like(a, 99)), D),
        Case("label-minus-5", C, CHECK_MTAN, "refuse", npy(lab, lambda a: np.full_like(a, -5)), D),
        Case(
            "label-HxWx1",
            C,
            CHECK_MTAN,
            "accept",
            npy(lab, lambda a: a[..., None]),
            D,
            note="arguable: an H×W×1 label map is the same map",
        ),
        Case(
            "depth-inf",
            C,
            CHECK_MTAN,
            "accept",
            npy(dep, lambda a: np.where(a > 2, np.inf, a).astype(a.dtype)),
            D,
            note="corrected to accept: infinite depth is an invalid pixel by design; data check warns naming the file",
        ),
        Case(
            "depth-negative",
            C,
            CHECK_MTAN,
            "accept",
            npy(dep, lambda a: -a),
            D,
            note="corrected to accept: negative depth in one file is invalid pixels (a whole split of it is refused); "
            "data check warns naming the file",
        ),
        Case(
            "depth-HxW",
            C,
            CHECK_MTAN,
            "accept",
            npy(dep, lambda a: a[..., 0]),
            D,
            note="arguable: depth without its channel axis",
        ),
        Case("normal-HxWx2", C, CHECK_MTAN, "refuse", npy(nor, lambda a: a[..., :2]), D),
        Case(
            "normal-nan",
            C,
            CHECK_MTAN,
            "accept",
            npy(nor, _nan_at),
            D,
            note="corrected to accept: a non-finite normal is an invalid pixel by design; data check warns, naming it",
        ),
        Case("normal-length-5", C, CHECK_MTAN, "refuse", npy(nor, lambda a: a * 5), D, note="not unit vectors"),
        Case("depth-file-missing", C, CHECK_MTAN, "refuse", remove(dep), D),
        Case("index-gap", C, CHECK_MTAN, "refuse", _mtan_gap, D, note="0,1,3: the numbering skips 2"),
        Case(
            "val-split-empty",
            C,
            CHECK_MTAN,
            "refuse",
            lambda t: [p.unlink() for p in (t / "DATA" / "val").rglob("*.npy")],
            D,
        ),
        Case("image-folder-is-file", C, CHECK_MTAN, "refuse", to_file("DATA/train/image"), D),
        Case("npy-is-folder", C, CHECK_MTAN, "refuse", to_dir(img), D),
        Case("npy-zero-bytes", C, CHECK_MTAN, "refuse", text(img, b""), D),
        Case("npy-truncated", C, CHECK_MTAN, "refuse", trunc(dep), D),
        Case("npy-self-symlink", C, CHECK_MTAN, "refuse", self_link(img), D),
        Case("npy-unreadable", C, CHECK_MTAN, "refuse", perm0(lab), D, root_skip=True),
        Case("extra-junk-files", C, CHECK_MTAN, "accept", _mtan_extra_files, D),
        Case("meta-num-classes-0", C, CHECK_MTAN, "refuse", meta("DATA", "num_classes", 0), D),
        Case(
            "meta-num-classes-2", C, CHECK_MTAN, "refuse", meta("DATA", "num_classes", 2), D, note="labels go up to 6"
        ),
        Case(
            "meta-names-too-few",
            C,
            CHECK_MTAN,
            "refuse",
            meta("DATA", "class_names", ["a", "b", "c"]),
            D,
            note="3 names for 7 classes: silently replaced by NYUv2's names",
        ),
        Case("meta-not-json", C, CHECK_MTAN, "refuse", text("DATA/densemtl.json", "{num_classes: 7"), D),
        Case("meta-is-folder", C, CHECK_MTAN, "refuse", to_dir("DATA/densemtl.json"), D),
        Case("meta-size-string", C, TRAIN_MTAN, "refuse", meta("DATA", "size", "big"), D),
        Case("train-label-nan", C, TRAIN_MTAN, "refuse", npy(lab, _nan_at), D),
        Case(
            "cityscapes-num-classes-5",
            C,
            ["data", "check", "--dataset", "cityscapes", "--data-root", "DATA", "--num-classes", "5", "--quiet"],
            "refuse",
            None,
            D,
        ),
    ]


def _ids(root: str, rel: str, fn: Callable[[list[str]], list[str]] | None = None, raw: str | None = None):
    def setup(tmp: Path) -> None:
        path = tmp / root / rel
        if raw is not None:
            path.write_text(raw)
            return
        assert fn is not None
        path.write_text("".join(f"{i}\n" for i in fn(path.read_text().split())))

    return setup


def nyud_cases() -> list[Case]:
    C, D = "dataset-nyud", ("NYUD",)
    lst = "gt_sets/train.txt"
    return [
        Case("list-missing", C, CHECK_NYUD, "refuse", remove(f"NYUD/{lst}"), D),
        Case("list-empty", C, CHECK_NYUD, "refuse", text(f"NYUD/{lst}", ""), D),
        Case("list-duplicate-ids", C, CHECK_NYUD, "refuse", _ids("NYUD", lst, lambda ids: ids + ids[:1]), D),
        Case("list-unknown-id", C, CHECK_NYUD, "refuse", _ids("NYUD", lst, lambda ids: [*ids, "9999"]), D),
        Case("list-crlf", C, CHECK_NYUD, "accept", text(f"NYUD/{lst}", "0000\r\n0001\r\n0002\r\n0003\r\n"), D),
        Case("list-blank-lines", C, CHECK_NYUD, "accept", text(f"NYUD/{lst}", "\n0000 \n\n0001\n0002\n0003\n\n"), D),
        Case(
            "list-path-traversal", C, CHECK_NYUD, "refuse", _ids("NYUD", lst, lambda ids: [*ids, "../../etc/passwd"]), D
        ),
        Case("list-binary", C, CHECK_NYUD, "refuse", text(f"NYUD/{lst}", b"\xff\xfe\x00\x81garbage\n"), D),
        Case("list-unreadable", C, CHECK_NYUD, "refuse", perm0(f"NYUD/{lst}"), D, root_skip=True),
        Case("list-is-folder", C, CHECK_NYUD, "refuse", to_dir(f"NYUD/{lst}"), D),
        Case(
            "train-val-overlap",
            C,
            CHECK_NYUD,
            "accept",
            text("NYUD/gt_sets/val.txt", "0000\n0004\n"),
            D,
            note="corrected to accept: a val id also in train is a warning naming the ids (overlap may be meant)",
        ),
        Case(
            "depth-nan",
            C,
            CHECK_NYUD,
            "accept",
            npy("NYUD/depth/0001.npy", _nan_at),
            D,
            note="corrected to accept: NaN depth is an invalid pixel by design; data check warns naming the file",
        ),
        Case("depth-3d", C, CHECK_NYUD, "refuse", npy("NYUD/depth/0001.npy", lambda a: np.stack([a, a, a], -1)), D),
        Case("depth-float16", C, CHECK_NYUD, "accept", npy("NYUD/depth/0001.npy", lambda a: a.astype(np.float16)), D),
        Case("depth-is-folder", C, CHECK_NYUD, "refuse", to_dir("NYUD/depth/0001.npy"), D),
        Case("seg-rgb", C, CHECK_NYUD, "refuse", png("NYUD/segmentation/0001.png", lambda a: np.stack([a] * 3, -1)), D),
        Case(
            "seg-class-100",
            C,
            CHECK_NYUD,
            "refuse",
            png("NYUD/segmentation/0001.png", lambda a: np.full_like(a, 100)),
            D,
        ),
        Case("seg-wrong-size", C, CHECK_NYUD, "refuse", png("NYUD/segmentation/0001.png", lambda a: a[:16]), D),
        Case("image-truncated", C, CHECK_NYUD, "refuse", trunc("NYUD/images/0002.png", 0.4), D),
        Case("normals-grey-L", C, CHECK_NYUD, "refuse", png("NYUD/normals/0001.png", lambda a: a[..., 0]), D),
        Case(
            "edge-grey-ramp",
            C,
            CHECK_NYUD,
            "accept",
            png("NYUD/edge/0001.png", lambda a: np.linspace(0, 255, a.size).reshape(a.shape).astype(np.uint8)),
            D,
            note="arguable: soft edges",
        ),
        Case("images-folder-missing", C, CHECK_NYUD, "refuse", remove("NYUD/images"), D),
        Case("train-nyud-list-empty", C, TRAIN_NYUD, "refuse", text(f"NYUD/{lst}", "\n"), D),
    ]


def _label_map(fn: Callable[[np.ndarray], Any], key: str = "LabelMap"):
    def setup(tmp: Path) -> None:
        from scipy.io import loadmat, savemat

        path = tmp / "PASCAL" / "pascal-context" / "trainval" / "synth_000001.mat"
        lab = loadmat(path)["LabelMap"]
        savemat(path, {key: fn(lab)})

    return setup


def _parts(fn: Callable[[Any], None]):
    def setup(tmp: Path) -> None:
        from scipy.io import loadmat, savemat

        for i in range(4):
            path = tmp / "PASCAL" / "human_parts" / f"synth_00000{i}.mat"
            mat = loadmat(path)
            fn(mat["anno"])
            savemat(path, {"anno": mat["anno"]})

    return setup


def _objects(anno: Any) -> Any:
    return anno[0, 0]["objects"]


def _set_field(name: str, value: Callable[[Any], Any]):
    def fn(anno: Any) -> None:
        objs = _objects(anno)
        for j in range(objs.shape[1]):
            objs[0, j][name] = value(objs[0, j][name])

    return fn


def _person_part_name(anno: Any) -> None:
    objs = _objects(anno)
    for j in range(objs.shape[1]):
        parts = objs[0, j]["parts"]
        if parts.size:
            for k in range(parts.shape[1]):
                parts[0, k]["part_name"] = np.array(["tail"])


def pascal_cases() -> list[Case]:
    C, D = "dataset-pascal", ("PASCAL",)
    lst = "PASCAL/ImageSets/Context/train.txt"
    sem = "PASCAL/semseg/pascal-context/synth_000001.png"
    return [
        Case("list-missing", C, CHECK_PASCAL, "refuse", remove(lst), D),
        Case("list-empty", C, CHECK_PASCAL, "refuse", text(lst, ""), D),
        Case(
            "list-duplicate-ids",
            C,
            CHECK_PASCAL,
            "refuse",
            _ids("PASCAL", "ImageSets/Context/train.txt", lambda ids: ids + ids),
            D,
        ),
        Case(
            "list-unknown-id",
            C,
            CHECK_PASCAL,
            "refuse",
            _ids("PASCAL", "ImageSets/Context/train.txt", lambda ids: [*ids, "2008_000000"]),
            D,
        ),
        Case("jpeg-truncated", C, CHECK_PASCAL, "refuse", trunc("PASCAL/JPEGImages/synth_000002.jpg", 0.3), D),
        Case(
            "jpeg-is-png",
            C,
            CHECK_PASCAL,
            "accept",
            png("PASCAL/JPEGImages/synth_000002.jpg", lambda a: a, format="PNG"),
            D,
        ),
        Case("jpeg-grey", C, CHECK_PASCAL, "accept", png("PASCAL/JPEGImages/synth_000002.jpg", lambda a: a, "L"), D),
        Case("semseg-class-50", C, CHECK_PASCAL, "refuse", png(sem, lambda a: np.full_like(a, 50)), D),
        Case("semseg-wrong-size", C, CHECK_PASCAL, "refuse", png(sem, lambda a: a[:, :20]), D),
        Case("labelmap-missing-key", C, CHECK_PASCAL, "refuse", _label_map(lambda a: a, key="Labels"), D),
        Case("labelmap-float-nan", C, CHECK_PASCAL, "refuse", _label_map(lambda a: _nan_at(a)), D),
        Case("labelmap-wrong-shape", C, CHECK_PASCAL, "refuse", _label_map(lambda a: a[:10]), D),
        Case("labelmap-value-1000", C, CHECK_PASCAL, "refuse", _label_map(lambda a: np.full_like(a, 1000)), D),
        Case("labelmap-string", C, CHECK_PASCAL, "refuse", _label_map(lambda a: "labels"), D),
        Case(
            "context-mat-garbage",
            C,
            CHECK_PASCAL,
            "refuse",
            text("PASCAL/pascal-context/trainval/synth_000001.mat", "MATLAB 5.0 MAT-file garbage"),
            D,
        ),
        Case(
            "parts-mat-no-anno",
            C,
            CHECK_PASCAL,
            "refuse",
            lambda t: __import__("scipy.io").io.savemat(t / "PASCAL/human_parts/synth_000000.mat", {"x": np.zeros(1)}),
            D,
        ),
        Case("parts-mask-wrong-shape", C, CHECK_PASCAL, "refuse", _parts(_set_field("mask", lambda m: m[:5, :5])), D),
        Case("parts-mask-string", C, CHECK_PASCAL, "refuse", _parts(_set_field("mask", lambda m: np.array(["x"]))), D),
        Case(
            "parts-unknown-part-name",
            C,
            CHECK_PASCAL,
            "refuse",
            _parts(_person_part_name),
            D,
            note="arguable: an unknown part name could be ignored",
        ),
        Case("parts-mat-truncated", C, CHECK_PASCAL, "refuse", trunc("PASCAL/human_parts/synth_000002.mat", 0.5), D),
        Case(
            "normals-grey-L",
            C,
            CHECK_PASCAL,
            "refuse",
            png("PASCAL/normals_distill/synth_000001.png", lambda a: a[..., 0]),
            D,
        ),
        Case(
            "saliency-rgb",
            C,
            CHECK_PASCAL,
            "accept",
            png("PASCAL/sal_distill/synth_000001.png", lambda a: np.stack([a] * 3, -1)),
            D,
            note="arguable: grey stored as RGB",
        ),
        Case("sal-folder-missing", C, CHECK_PASCAL, "refuse", remove("PASCAL/sal_distill"), D),
        Case("meta-size-abc", C, TRAIN_PASCAL, "refuse", meta("PASCAL", "size", "abc"), D),
        Case(
            "meta-num-classes-5",
            C,
            CHECK_PASCAL,
            "refuse",
            meta("PASCAL", "num_classes", 5),
            D,
            note="PASCAL has 21 classes; 5 in densemtl.json",
        ),
        Case("meta-size-0x0", C, TRAIN_PASCAL, "refuse", meta("PASCAL", "size", [0, 0]), D),
    ]


def cases() -> list[Case]:
    return [*mtan_cases(), *nyud_cases(), *pascal_cases()]
