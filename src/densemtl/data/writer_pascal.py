"""Writing synthetic scenes in the PASCAL-MT layout (``densemtl data synth --layout pascal_context``).

Each rendered room becomes the files a PASCAL-Context image has (JPEG, PNG and MAT, as read by
:mod:`densemtl.data.pascal_context`). The synthetic classes stand for PASCAL classes: floor, wall
and ceiling are the context classes of those names (VOC background), boxes are chairs, spheres
potted plants (on which the distilled normals are invalid, as in the real data), cylinders
persons and slabs dining tables. The renderer has no people, so each cylinder is a person whose
visible mask is cut into part bands from top to bottom: head (its top rows ``hair``), neck,
torso with arms at its sides (upper, then lower arm and hand), upper legs, then lower legs and
feet (left and right halves). Rooms without a cylinder have no person, so their parts are all
ignore. Image sizes vary like PASCAL's: every other image is shorter than ``size`` by an eighth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from densemtl.data._pascal_files import CONTEXT_OF_VOC, VOC_CLASSES
from densemtl.data.base import MAX_SEED
from densemtl.errors import ConfigError, DataError

__all__ = ["person_parts", "write_pascal"]

#: Context label (1..459) of each synthetic class (floor, wall, ceiling, box, sphere, cylinder, slab).
CONTEXT_OF_SYNTHETIC = (158, 440, 68, 72, 308, 284, 397)
SPLITS = ("train", "val")


def _voc_of_context(labels: np.ndarray) -> np.ndarray:
    """The 21-class map (0 background) of a context label map."""
    lut = np.zeros(460, np.uint8)
    for voc, ctx in enumerate(CONTEXT_OF_VOC):
        if ctx:
            lut[ctx] = voc
    return lut[labels]


def person_parts(mask: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """PASCAL-Part style (part name, mask) bands of one person's visible ``mask`` (H, W bool)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return []
    top, height = rows.min(), rows.max() - rows.min() + 1
    left, width = cols.min(), cols.max() - cols.min() + 1
    r = (np.arange(mask.shape[0])[:, None] - top) / height  # 0 at the top of the person, < 1
    c = (np.arange(mask.shape[1])[None, :] - left) / width
    side = c < 0.5  # the image's left: the person's right, facing the camera
    arm = (c < 0.2) | (c >= 0.8)
    bands = [
        ("hair", r < 0.05),
        ("head", (r >= 0.05) & (r < 0.18)),
        ("neck", (r >= 0.18) & (r < 0.22)),
        ("torso", (r >= 0.22) & (r < 0.55) & ~arm),
        ("ruarm", (r >= 0.22) & (r < 0.38) & arm & side),
        ("luarm", (r >= 0.22) & (r < 0.38) & arm & ~side),
        ("rlarm", (r >= 0.38) & (r < 0.5) & arm & side),
        ("llarm", (r >= 0.38) & (r < 0.5) & arm & ~side),
        ("rhand", (r >= 0.5) & (r < 0.55) & arm & side),
        ("lhand", (r >= 0.5) & (r < 0.55) & arm & ~side),
        ("ruleg", (r >= 0.55) & (r < 0.78) & side),
        ("luleg", (r >= 0.55) & (r < 0.78) & ~side),
        ("rlleg", (r >= 0.78) & (r < 0.95) & side),
        ("llleg", (r >= 0.78) & (r < 0.95) & ~side),
        ("rfoot", (r >= 0.95) & side),
        ("lfoot", (r >= 0.95) & ~side),
    ]
    return [(name, band & mask) for name, band in bands if (band & mask).any()]


def _struct_array(records: list[dict[str, object]], fields: Sequence[str]) -> np.ndarray:
    """A 1×n MATLAB struct array (``savemat`` writes a structured object array as one)."""
    arr = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for i, rec in enumerate(records):
        for f in fields:
            arr[0, i][f] = rec[f]
    return arr


def _anno(id_: str, labels: np.ndarray, instance: np.ndarray) -> dict[str, np.ndarray]:
    """PASCAL-Part's ``anno`` struct for one image: every object with its VOC class and mask, the
    persons with their parts (``[]`` for the others)."""
    voc = _voc_of_context(labels)
    objects = []
    for k in np.unique(instance[instance > 0]):
        mask = instance == k
        cls = int(np.bincount(voc[mask]).argmax())
        if cls == 0:
            continue
        parts = person_parts(mask) if cls == 15 else []
        objects.append(
            {
                "class": VOC_CLASSES[cls],
                "class_ind": np.array([[cls]], np.uint8),
                "mask": mask.astype(np.uint8),
                "parts": _struct_array(
                    [{"part_name": n, "mask": m.astype(np.uint8)} for n, m in parts], ("part_name", "mask")
                )
                if parts
                else np.zeros((0, 0)),
            }
        )
    anno = _struct_array(
        [{"imname": id_, "objects": _struct_array(objects, ("class", "class_ind", "mask", "parts"))}],
        ("imname", "objects"),
    )
    return {"anno": anno}


def _write_image(id_: str, out: Path, scene: dict[str, np.ndarray]) -> None:
    from PIL import Image
    from scipy.io import savemat

    labels = np.asarray(CONTEXT_OF_SYNTHETIC, np.uint16)[scene["seg"]]
    rgb = np.round(np.clip(scene["image"], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(out / "JPEGImages" / f"{id_}.jpg", quality=95)
    Image.fromarray(_voc_of_context(labels)).save(out / "semseg" / "pascal-context" / f"{id_}.png")
    sal = np.where(scene["instance"] > 0, 235, 15).astype(np.uint8)  # distilled maps are not exactly 0/255
    Image.fromarray(sal).save(out / "sal_distill" / f"{id_}.png")
    normal = np.round((np.clip(scene["normal"], -1, 1) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(normal).save(out / "normals_distill" / f"{id_}.png")
    savemat(out / "pascal-context" / "trainval" / f"{id_}.mat", {"LabelMap": labels}, do_compression=True)
    savemat(out / "human_parts" / f"{id_}.mat", _anno(id_, labels, scene["instance"]), do_compression=True)


def _check(n_train: object, n_val: object, size: object, seed: object) -> tuple[int, int]:
    from densemtl.data.synthetic import MIN_SIDE

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be in 0..{MAX_SEED} (2**32 - 1), got {seed!r}")
    for name, value in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        h, w = (int(s) for s in size)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ConfigError(f"size must be (H, W), got {size!r}") from None
    if h - h // 8 < MIN_SIDE or w < MIN_SIDE:  # the shorter images must render too
        raise ConfigError(f"size must be at least 18x{MIN_SIDE} (H x W), got {size!r}")
    return h, w


def write_pascal(out: str | Path, n_train: int, n_val: int, size: tuple[int, int], seed: int) -> None:
    """Render ``n_train`` + ``n_val`` synthetic rooms into ``out`` in the PASCAL-MT layout.

    ``size`` (H, W) is the largest image (odd images are H - H // 8 high). ``out`` must not exist
    or be an empty folder (DataError otherwise: nothing is overwritten). ``out/densemtl.json``
    records the size, so that ``--dataset pascal_context --data-root out`` trains at it.
    """
    from densemtl.data.scenes import render_scene
    from densemtl.data.synthetic import SPLIT_CODES

    out = Path(out).expanduser()
    h, w = _check(n_train, n_val, size, seed)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; refusing to overwrite (choose a new --out)")
    folders = ("JPEGImages", "semseg/pascal-context", "human_parts", "sal_distill", "normals_distill")
    try:
        for folder in (*folders, "pascal-context/trainval", "ImageSets/Context"):
            (out / folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create folder ({exc.strerror or exc})") from None
    first = 0
    for split, count in zip(SPLITS, (int(n_train), int(n_val)), strict=True):
        ids = [f"synth_{first + i:06d}" for i in range(count)]
        for i, id_ in enumerate(ids):
            shape = (h - h // 8 if i % 2 else h, w)
            _write_image(id_, out, render_scene((int(seed), SPLIT_CODES[split], i), shape))
        (out / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{id_}\n" for id_ in ids))
        first += count
    meta = {
        "source": "densemtl data synth --layout pascal_context",
        "seed": int(seed),
        "size": [h, w],
        "num_classes": len(VOC_CLASSES),
        "class_names": list(VOC_CLASSES),
    }
    (out / "densemtl.json").write_text(json.dumps(meta, indent=2) + "\n")
