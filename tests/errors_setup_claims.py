"""``SETUP`` of the rows of docs/errors.md's section "Data that cannot be what it claims, and
predict's inputs" (imported by tests/test_errors_table.py): tiny NYUD-MT and PASCAL-Context sets
under ``TMP``, broken the way each row says, and mis-scaled inputs for predict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from densemtl.data.writer_nyud import write_nyud
from densemtl.data.writer_pascal import write_pascal

Setup = Callable[[dict[str, Path]], None]
H, W = 32, 40


def _png(path: Path, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    with Image.open(path) as im:
        v = np.array(im)
    Image.fromarray(fn(v).astype(np.uint8)).save(path)


def _nyud(folder: str, ids: tuple[str, ...], fn: Callable[[np.ndarray], np.ndarray]) -> Setup:
    def setup(paths: dict[str, Path]) -> None:
        root = paths["TMP"] / "nyud"
        write_nyud(root, 4, 2, (H, W), 0)
        for ident in ids:
            _png(root / folder / f"{ident}.png", fn)

    return setup


def _pascal(edit: Callable[[Path], None]) -> Setup:
    def setup(paths: dict[str, Path]) -> None:
        root = paths["TMP"] / "pascal"
        write_pascal(root, 4, 2, (H, W), 0)
        edit(root)

    return setup


def _saliency(ids: tuple[str, ...], fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    return lambda root: [_png(root / "sal_distill" / f"{i}.png", fn) for i in ids] and None


def _parts(ident: str, class_ind: object, mask_side: int | None = None) -> Callable[[Path], None]:
    """Replace ``ident``'s parts .mat by one person (``class_ind``) with a head mask."""

    def edit(root: Path) -> None:
        with Image.open(root / "JPEGImages" / f"{ident}.jpg") as im:
            w, h = im.size
        side = (mask_side, mask_side) if mask_side else (h, w)
        part = np.empty((1, 1), dtype=[("part_name", object), ("mask", object)])
        part[0, 0]["part_name"], part[0, 0]["mask"] = np.array(["head"]), np.ones(side, np.uint8)
        obj = np.empty((1, 1), dtype=[("class_ind", object), ("mask", object), ("parts", object)])
        obj[0, 0]["class_ind"], obj[0, 0]["mask"], obj[0, 0]["parts"] = np.array([[class_ind]]), np.ones((h, w)), part
        anno = np.empty((1, 1), dtype=[("objects", object)])
        anno[0, 0]["objects"] = obj
        savemat(root / "human_parts" / f"{ident}.mat", {"anno": anno})

    return edit


def _rescale(rel: str, factor: float) -> Setup:
    def setup(paths: dict[str, Path]) -> None:
        p = paths["DATA"] / rel
        np.save(p, np.load(p) * factor)

    return setup


def _save(name: str, arr: np.ndarray) -> Setup:
    return lambda paths: np.save(paths["TMP"] / name, arr)


def _tiff(paths: dict[str, Path]) -> None:
    Image.fromarray(np.full((H, W), 5.0, np.float32)).save(paths["TMP"] / "f.tif")


def _object_mask(ident: str, mask: np.ndarray) -> Callable[[Path], None]:
    """Replace the first object's own mask in ``ident``'s parts .mat."""

    def edit(root: Path) -> None:
        from scipy.io import loadmat

        path = root / "human_parts" / f"{ident}.mat"
        mat = loadmat(path)
        mat["anno"][0, 0]["objects"][0, 0]["mask"] = mask
        savemat(path, {"anno": mat["anno"]})

    return edit


def _meta(rel: str, **edit: object) -> Setup:
    """Set (a value) or drop (None) keys of the densemtl.json under ``TMP``/``rel`` (``DATA`` for "DATA")."""

    def setup(paths: dict[str, Path]) -> None:
        import json

        if rel != "DATA":
            write_pascal(paths["TMP"] / rel, 4, 2, (H, W), 0)
        path = (paths["DATA"] if rel == "DATA" else paths["TMP"] / rel) / "densemtl.json"
        meta = {k: v for k, v in {**json.loads(path.read_text()), **edit}.items() if v is not None}
        path.write_text(json.dumps(meta))

    return setup


def _meta_folder(paths: dict[str, Path]) -> None:
    (paths["DATA"] / "densemtl.json").unlink()
    (paths["DATA"] / "densemtl.json").mkdir()


def _colour_saliency(root: Path) -> None:
    path = root / "sal_distill" / "synth_000001.png"
    with Image.open(path) as im:
        v = np.array(im)
    Image.fromarray(np.stack([v, v, 255 - v], -1).astype(np.uint8)).save(path)


def _strip(paths: dict[str, Path]) -> None:
    Image.fromarray(np.zeros((2, 20000, 3), np.uint8)).save(paths["TMP"] / "strip.png")


TRAIN_NYUD = ("0000", "0001", "0002", "0003")
CLAIMS_SETUP: dict[str, Setup] = {
    "nyud-normals-grey": _nyud("normals", TRAIN_NYUD, lambda v: np.full_like(v, 128)),
    "check-nyud-normals-grey": _nyud("normals", TRAIN_NYUD, lambda v: np.full_like(v, 128)),
    "nyud-edge-none": _nyud("edge", TRAIN_NYUD, np.zeros_like),
    "check-nyud-edge-inverted": _nyud("edge", ("0005",), lambda v: 255 - v),
    "check-pascal-saliency-01": _pascal(_saliency(("synth_000005",), lambda v: v > 127)),
    "pascal-saliency-none": _pascal(_saliency(("synth_000004", "synth_000005"), lambda v: np.minimum(v, 100))),
    "parts-class-ind": _pascal(_parts("synth_000000", "abc")),
    "check-parts-class-ind": _pascal(_parts("synth_000003", float("nan"))),
    "check-parts-mask": _pascal(_parts("synth_000004", 15, mask_side=3)),
    "image-0-255": _rescale("train/image/0.npy", 255.0),
    "depth-mm": _rescale("train/depth/0.npy", 1000.0),
    "predict-npy-range": _save("big.npy", np.full((H, W, 3), 1e30, np.float32)),
    "predict-npy-negative": _save("neg.npy", np.full((H, W, 3), -5.0, np.float32)),
    "predict-npy-0-255": _save("f.npy", np.full((H, W, 3), 200.0, np.float32)),
    "predict-complex": _save("c.npy", np.zeros((H, W, 3), np.complex64)),
    "predict-int-npy": _save("i.npy", np.zeros((H, W, 3), np.int64)),
    "predict-channels": _save("two.npy", np.zeros((H, W, 2), np.float32)),
    "predict-tiff-range": _tiff,
    "pascal-meta-classes": _meta("pascal", num_classes=5, class_names=None),
    "meta-names-count": _meta("DATA", class_names=["a", "b", "c"]),
    "meta-folder": _meta_folder,
    "check-parts-object-mask": _pascal(_object_mask("synth_000002", np.ones((5, 5)))),
    "check-saliency-colour": _pascal(_colour_saliency),
    "predict-aspect": _strip,
    "predict-long-name": lambda paths: Image.new("RGB", (W, H)).save(paths["TMP"] / ("L" * 250 + ".png")),
}
