"""predict's inputs: every accepted format scaled to 0..1 with its conversion said once, every
mis-scaled one refused in one line (``densemtl.data.images.read_image``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densemtl.cli.main import main
from densemtl.data.images import read_image
from densemtl.data.writer import synthesize
from densemtl.errors import DataError

H, W = 32, 40
RAMP = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)


def _png(mode: str, arr: np.ndarray, suffix: str = ".png") -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / f"in{suffix}"
        Image.fromarray(arr).convert(mode).save(path) if mode != "keep" else Image.fromarray(arr).save(path)
        return path

    return write


def _npy(arr: np.ndarray) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        np.save(tmp / "in.npy", arr)
        return tmp / "in.npy"

    return write


RGB8 = (np.stack([RAMP] * 3, axis=2) * 255).round().astype(np.uint8)
ACCEPTED = {  # name: (writer, the red channel read back, words of the note or None)
    "rgb-png": (_png("RGB", RGB8), RGB8[..., 0] / 255, None),
    "rgb-jpeg": (_png("RGB", RGB8, ".jpg"), None, None),
    "grey-png": (_png("L", RGB8), RGB8[..., 0] / 255, "grey, replicated to 3 channels"),
    "rgba-png": (_png("RGBA", RGB8), RGB8[..., 0] / 255, "RGBA, alpha dropped"),
    "palette-png": (_png("P", RGB8), None, "palette, converted to RGB"),
    "grey16-png": (_png("keep", (RAMP * 60000).astype(np.uint16)), (RAMP * 60000).astype(np.uint16) / 65535,
                   "16-bit, scaled by 1/65535; grey, replicated to 3 channels"),
    "grey16-tiff": (_png("keep", (RAMP * 60000).astype(np.uint16), ".tif"), (RAMP * 60000).astype(np.uint16) / 65535,
                    "16-bit, scaled by 1/65535"),
    "float-tiff": (_png("keep", RAMP, ".tif"), RAMP, "grey, replicated to 3 channels"),
    "float-npy": (_npy(np.stack([RAMP] * 3, axis=2)), RAMP, None),
    "float-npy-grey": (_npy(RAMP), RAMP, "grey, replicated"),
    "float-npy-hw1": (_npy(RAMP[..., None]), RAMP, "grey, replicated"),
    "float-npy-rounding": (_npy(np.stack([RAMP * 1.0005] * 3, axis=2)), np.clip(RAMP * 1.0005, 0, 1), None),
    "uint8-npy": (_npy(RGB8), RGB8[..., 0] / 255, "uint8 read as 0..255, scaled to 0..1"),
    "uint16-npy": (_npy(np.stack([(RAMP * 65535).astype(np.uint16)] * 4, axis=2)), None,
                   "uint16 read as 0..65535, scaled to 0..1; alpha channel dropped"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_accepted_inputs_are_scaled_to_0_1_and_say_how(name: str, tmp_path: Path) -> None:
    write, red, note = ACCEPTED[name]
    path = write(tmp_path)
    img, said = read_image(path)
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert float(img.min()) >= 0 and float(img.max()) <= 1
    assert float(img.max()) > 0.9  # nothing saturated to black, nothing left at 1/255 of its range
    if red is not None:
        assert np.allclose(img[0].numpy(), red, atol=1e-6)
    if note is None:
        assert said is None
    else:
        assert said is not None and said.startswith(f"image {path}: ") and note in said


REFUSED = {  # name: (writer, the message after "image <path> ")
    "npy-1e30": (_npy(np.full((H, W, 3), 1e30, np.float32)), "holds values 1e+30..1e+30; a float image must be"),
    "npy-negative": (_npy(np.full((H, W, 3), -5.0)), "holds values -5..-5; a float image must be in 0..1"),
    "npy-0-255-float": (_npy(RGB8.astype(np.float32)), "must be in 0..1 (0..255? divide by 255, or store it as uint8)"),
    "npy-complex": (_npy(np.zeros((H, W, 3), np.complex64)), "holds complex values (complex64); expected real numbers"),
    "npy-nan": (_npy(np.full((H, W, 3), np.nan, np.float32)), "has NaN or infinite values"),
    "npy-inf": (_npy(np.full((H, W), np.inf)), "has NaN or infinite values"),
    "npy-int64": (_npy(RGB8.astype(np.int64)), "has dtype int64; expected float in 0..1, uint8 (0..255) or uint16"),
    "npy-bool": (_npy(np.ones((H, W, 3), bool)), "has dtype bool; expected float"),
    "npy-two-channels": (_npy(np.zeros((H, W, 2), np.float32)), "has shape (32, 40, 2); expected H×W, H×W×1, H×W×3"),
    "npy-chw": (_npy(np.zeros((3, H, W), np.float32)), "has shape (3, 32, 40); expected"),
    "npy-4d": (_npy(np.zeros((1, H, W, 3), np.float32)), "has shape (1, 32, 40, 3); expected"),
    "npy-structured": (_npy(np.zeros((H, W), [("a", "f4")])), "is not a plain numeric array"),
    "tiff-float-5": (_png("keep", RAMP * 5, ".tif"), "holds values 0..5; a float image must be in 0..1"),
    "tiff-float-nan": (_png("keep", np.full((H, W), np.nan, np.float32), ".tif"), "has NaN or infinite values"),
    "tiff-int32": (_png("keep", (RAMP * 1e6).astype(np.int32), ".tif"), "holds values 0..1000000; an integer image"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_mis_scaled_inputs_are_refused_in_one_line(name: str, tmp_path: Path) -> None:
    write, words = REFUSED[name]
    path = write(tmp_path)
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"image {path} ") and words in message and "\n" not in message, message


def test_a_folder_is_not_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder; give image files"):
        read_image(tmp_path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict-inputs")
    torch.set_num_threads(1)
    synthesize(root / "data", 4, 2, (H, W), 0)
    args = ["train", "--dataset", "nyuv2", "--data-root", str(root / "data"), "--epochs", "0", "--batch-size", "2"]
    args += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--quiet", "--out", str(root / "run")]
    assert main(args) == 0
    return root / "run"


def test_predict_notes_each_conversion_once_and_refuses_before_writing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    grey16 = tmp_path / "g16.png"
    Image.fromarray((RAMP * 60000).astype(np.uint16)).save(grey16)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(RGB8).save(rgb)
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(grey16), str(rgb), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == f"densemtl: note: image {grey16}: 16-bit, scaled by 1/65535; grey, replicated to 3 channels\n"
    assert sorted(p.name for p in out.iterdir()) == ["g16_pred.png", "rgb_pred.png"]
    bad = tmp_path / "big.npy"
    np.save(bad, np.full((H, W, 3), 1e30, np.float32))
    out2 = tmp_path / "pred2"
    assert main(["predict", "--checkpoint", str(run), str(grey16), str(bad), "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert err == f"densemtl: error: image {bad} holds values 1e+30..1e+30; a float image must be in 0..1\n"
    assert not out2.exists()


def test_an_extreme_aspect_ratio_is_refused_before_writing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((2, 20000, 3), np.uint8)).save(strip)
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(strip), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"densemtl: error: image {strip} (2x20000) would be predicted at 32x320000, a side above 8192 pixels; "
        "crop it, or give --size HxW\n"
    )
    assert not out.exists()


def test_a_fifo_or_a_device_is_refused_without_reading(tmp_path: Path) -> None:
    import os

    fifo, zero = tmp_path / "pipe.npy", tmp_path / "zero.png"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(DataError) as info:
            read_image(path)
        assert str(info.value) == f"image {path} is not a regular file (a FIFO or a device?); give image files"


def test_a_file_name_with_a_line_break_stays_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "two\nlines.png"
    bad.write_text("not a picture")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(bad), "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert err == f"densemtl: error: image {tmp_path}/two\\nlines.png cannot be read (UnidentifiedImageError)\n"


def test_an_output_name_too_long_is_refused_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    long = tmp_path / ("L" * 250 + ".png")
    Image.fromarray(RGB8).save(long)
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "none"), str(long), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"densemtl: error: image {long}: the output name {'L' * 40}… would be 259 bytes, more than the 255 a file "
        "name may hold; rename the input\n"
    )
    assert not out.exists()
