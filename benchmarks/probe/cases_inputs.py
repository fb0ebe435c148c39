"""predict-input: the files a user hands to ``densemtl predict`` (formats, shapes, odd files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from _util import Case, chmod0, fifo, image, npsave, png_header_only, rgb, truncate, write

CLS = "predict-input"


def predict(*images: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["predict", "--checkpoint", "RUN", "--out", "OUT", *extra, *images]


def _img(name: str, mode: str | None = None, h: int = 32, w: int = 40, **save: object):
    def setup(tmp: Path) -> None:
        image(tmp / name, rgb(h, w), mode, **save)

    return setup


def _np(name: str, arr: np.ndarray, **kw: object):
    def setup(tmp: Path) -> None:
        npsave(tmp / name, arr, **kw)

    return setup


def _int32_tiff(tmp: Path) -> None:
    image(tmp / "i32.tif", np.random.default_rng(0).integers(0, 2**20, (32, 40), dtype=np.int32))


def _gif_animated(tmp: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(rgb(seed=i)).convert("P") for i in range(3)]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _cmyk_jpeg(tmp: Path) -> None:
    image(tmp / "cmyk.jpg", rgb(), "CMYK", quality=90)


def _truncated(name: str, mode: str | None = None, keep: float = 0.5, **save: object):
    def setup(tmp: Path) -> None:
        image(tmp / name, rgb(64, 80), mode, **save)
        truncate(tmp / name, keep)

    return setup


def _npy_truncated(tmp: Path) -> None:
    npsave(tmp / "t.npy", np.random.default_rng(0).random((32, 40, 3), np.float32))
    truncate(tmp / "t.npy", 0.6)


def _symlink(tmp: Path) -> None:
    image(tmp / "real.png", rgb())
    os.symlink("real.png", tmp / "link.png")


def _dangling(tmp: Path) -> None:
    os.symlink("nowhere.png", tmp / "dangling.png")


def _loop(tmp: Path) -> None:
    os.symlink("loop.png", tmp / "loop.png")


def _unreadable(tmp: Path) -> None:
    image(tmp / "locked.png", rgb())
    chmod0(tmp / "locked.png")


def _same_stem(tmp: Path) -> None:
    image(tmp / "a" / "x.png", rgb())
    image(tmp / "b" / "x.png", rgb(seed=1))


def _out_is_file(tmp: Path) -> None:
    image(tmp / "x.png", rgb())
    write(tmp / "OUT", "not a folder\n")


def _long_name(tmp: Path) -> None:
    image(tmp / ("L" * 250 + ".png"), rgb())


def _newline_name(tmp: Path) -> None:
    image(tmp / "two\nlines.png", rgb())


def _fifo(tmp: Path) -> None:
    fifo(tmp / "pipe.png")


def _npy_fifo(tmp: Path) -> None:
    fifo(tmp / "pipe.npy")


def _dev_zero(tmp: Path) -> None:
    os.symlink("/dev/zero", tmp / "zero.npy")


def _f01(shape: tuple[int, ...], dtype: str = "float32", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(dtype)


def _dup_same_file(tmp: Path) -> None:
    image(tmp / "x.png", rgb())


def _svg(tmp: Path) -> None:
    write(tmp / "x.svg", '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="32"/>\n')


def _mixed_batch(tmp: Path) -> None:
    image(tmp / "good.png", rgb())
    write(tmp / "bad.png", b"\x89PNG\r\n\x1a\n garbage")


def _unicode_stem(tmp: Path) -> None:
    image(tmp / "my ïmage 東京 😀.png", rgb())


def cases() -> list[Case]:
    R = ("RUN",)
    c = [
        Case("png-palette-P", CLS, predict("p.png"), "accept", _img("p.png", "P"), R),
        Case("png-LA", CLS, predict("la.png"), "accept", _img("la.png", "LA"), R),
        Case("png-1bit", CLS, predict("bw.png"), "accept", _img("bw.png", "1"), R),
        Case("png-RGBA", CLS, predict("rgba.png"), "accept", _img("rgba.png", "RGBA"), R),
        Case("png-grey-L", CLS, predict("l.png"), "accept", _img("l.png", "L"), R),
        Case(
            "tiff-int32-I",
            CLS,
            predict("i32.tif"),
            "refuse",
            _int32_tiff,
            R,
            note="mode I (32-bit integer) grey: saturates like I;16 unless scaled",
        ),
        Case("jpeg-CMYK", CLS, predict("cmyk.jpg"), "accept", _cmyk_jpeg, R),
        Case("jpeg-progressive", CLS, predict("prog.jpg"), "accept", _img("prog.jpg", progressive=True), R),
        Case("gif-animated", CLS, predict("anim.gif"), "accept", _gif_animated, R),
        Case("bmp", CLS, predict("x.bmp"), "accept", _img("x.bmp"), R),
        Case("webp", CLS, predict("x.webp"), "accept", _img("x.webp"), R),
        Case("tiff-uint8-rgb", CLS, predict("x.tif"), "accept", _img("x.tif"), R),
        Case("png-named-jpg", CLS, predict("really_png.jpg"), "accept", _img("really_png.jpg", format="PNG"), R),
        Case("svg-text", CLS, predict("x.svg"), "refuse", _svg, R),
        Case("png-1x1", CLS, predict("one.png"), "accept", _img("one.png", h=1, w=1), R),
        Case("png-0x0-header", CLS, predict("zero.png"), "refuse", lambda t: png_header_only(t / "zero.png", 0, 0), R),
        Case(
            "png-huge-header",
            CLS,
            predict("huge.png"),
            "refuse",
            lambda t: png_header_only(t / "huge.png", 100000, 100000),
            R,
        ),
        Case(
            "png-2x20000-aspect",
            CLS,
            predict("strip.png"),
            "refuse",
            _img("strip.png", h=2, w=20000),
            R,
            note="resized to 32 high keeps the aspect: 32x320000",
        ),
        Case("png-truncated", CLS, predict("t.png"), "refuse", _truncated("t.png"), R),
        Case("jpeg-truncated", CLS, predict("t.jpg"), "refuse", _truncated("t.jpg", quality=90), R),
        Case("png-zero-bytes", CLS, predict("empty.png"), "refuse", lambda t: write(t / "empty.png", b""), R),
        Case("png-is-text", CLS, predict("text.png"), "refuse", lambda t: write(t / "text.png", "hello\n"), R),
        Case(
            "npy-object-array",
            CLS,
            predict("obj.npy"),
            "refuse",
            lambda t: npsave(t / "obj.npy", np.empty((32, 40, 3), object), allow_pickle=True),
            R,
        ),
        Case(
            "npy-fortran-order", CLS, predict("f.npy"), "accept", _np("f.npy", np.asfortranarray(_f01((32, 40, 3)))), R
        ),
        Case("npy-4d", CLS, predict("b.npy"), "refuse", _np("b.npy", _f01((1, 32, 40, 3))), R),
        Case(
            "npy-bool",
            CLS,
            predict("bool.npy"),
            "refuse",
            _np("bool.npy", _f01((32, 40, 3)) > 0.5),
            R,
            note="0/1 booleans are not an image in [0,1]",
        ),
        Case("npy-float16", CLS, predict("h.npy"), "accept", _np("h.npy", _f01((32, 40, 3), "float16")), R),
        Case("npy-float64", CLS, predict("d.npy"), "accept", _np("d.npy", _f01((32, 40, 3), "float64")), R),
        Case(
            "npy-structured",
            CLS,
            predict("s.npy"),
            "refuse",
            _np("s.npy", np.zeros((32, 40, 3), dtype=[("a", "f4"), ("b", "i4")])),
            R,
        ),
        Case("npy-string-dtype", CLS, predict("u.npy"), "refuse", _np("u.npy", np.full((32, 40, 3), "x")), R),
        Case(
            "npy-HxWx4",
            CLS,
            predict("c4.npy"),
            "accept",
            _np("c4.npy", _f01((32, 40, 4))),
            R,
            note="corrected to accept: H×W×4 is RGBA as a PNG's is, its alpha dropped with a note (data/images.py)",
        ),
        Case("npy-CHW", CLS, predict("chw.npy"), "refuse", _np("chw.npy", _f01((3, 32, 40))), R),
        Case("npy-HxWx3-1x1", CLS, predict("px.npy"), "accept", _np("px.npy", _f01((1, 1, 3))), R),
        Case("npy-0x0x3", CLS, predict("z.npy"), "refuse", _np("z.npy", np.zeros((0, 0, 3), np.float32)), R),
        Case("npy-scalar", CLS, predict("sc.npy"), "refuse", _np("sc.npy", np.float32(0.5)), R),
        Case(
            "npy-int64-01",
            CLS,
            predict("i.npy"),
            "refuse",
            _np("i.npy", (_f01((32, 40, 3)) > 0.5).astype(np.int64)),
            R,
            note="integer arrays: 0..1 or 0..255? the loader cannot know",
        ),
        Case("npy-truncated", CLS, predict("t.npy"), "refuse", _npy_truncated, R),
        Case("npy-is-png", CLS, predict("png.npy"), "refuse", _img("png.npy", format="PNG"), R),
        Case("npy-UPPER-suffix", CLS, predict("up.NPY"), "accept", _np("up.NPY", _f01((32, 40, 3))), R),
        Case("npy-fifo", CLS, predict("pipe.npy"), "refuse", _npy_fifo, R, note="a named pipe: must not block"),
        Case("png-fifo", CLS, predict("pipe.png"), "refuse", _fifo, R, note="a named pipe: must not block"),
        Case("npy-dev-zero", CLS, predict("zero.npy"), "refuse", _dev_zero, R, note="an endless device file"),
        Case("symlink-to-png", CLS, predict("link.png"), "accept", _symlink, R),
        Case("symlink-dangling", CLS, predict("dangling.png"), "refuse", _dangling, R),
        Case("symlink-loop", CLS, predict("loop.png"), "refuse", _loop, R),
        Case("unreadable-000", CLS, predict("locked.png"), "refuse", _unreadable, R, root_skip=True),
        Case("same-stem-two-dirs", CLS, predict("a/x.png", "b/x.png"), "refuse", _same_stem, R),
        Case(
            "same-file-twice",
            CLS,
            predict("x.png", "x.png"),
            "refuse",
            _dup_same_file,
            R,
            note="arguable: the same file twice could be predicted once",
        ),
        Case("out-is-a-file", CLS, predict("x.png"), "refuse", _out_is_file, R),
        Case(
            "name-250-chars",
            CLS,
            predict("L" * 250 + ".png"),
            "refuse",
            _long_name,
            R,
            note="OUT/<stem>_pred.png is longer than NAME_MAX",
        ),
        Case("name-unicode-spaces", CLS, predict("my ïmage 東京 😀.png"), "accept", _unicode_stem, R),
        Case("name-newline", CLS, predict("two\nlines.png"), "accept", _newline_name, R),
        Case(
            "good-then-bad",
            CLS,
            predict("good.png", "bad.png"),
            "refuse",
            _mixed_batch,
            R,
            note="a bad second image: nothing of the first left behind",
        ),
        Case("save-npy-grey", CLS, predict("l.png", extra=("--save-npy",)), "accept", _img("l.png", "L"), R),
    ]
    return c
