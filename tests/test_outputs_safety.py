"""Outputs (issue 21): no output overwrites a file densemtl did not create for this run, nothing is
written through a symbolic link, a full disk names the path and leaves no partial file, an empty
``--out`` is refused, and a refused bench leaves no folder behind.

Each case: the one line, the exit status, the protected file's bytes unchanged, nothing new written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import densemtl.atomic as atomic
from densemtl.cli.main import main


@pytest.fixture
def tmp(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the session's tiny run (0 epochs, SegNet width 0.125) and its data (MTAN layout)
    under ``tmp_path`` (the working directory), and two images."""
    shutil.copytree(tiny_run / "run", tmp_path / "run")
    shutil.copytree(tiny_run / "data", tmp_path / "data")
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for name in ("b", "a"):
        np.save(tmp_path / "imgs" / f"{name}.npy", rng.random((32, 40, 3)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DENSEMTL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a link as its target, a folder as "dir", a file as its hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link " + os.readlink(p)
        else:
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(argv: list[str], capsys: pytest.CaptureFixture, root: Path, status: int = 2) -> str:
    """Run ``argv``; it must exit ``status`` with one line and leave every file under ``root`` as it was."""
    before = snapshot(root)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == status, err
    assert err.count("\n") == 1 and err.startswith("densemtl: error: ") and "Traceback" not in err, err
    assert snapshot(root) == before
    return err.rstrip("\n")[len("densemtl: error: ") :]


PREDICT = ["predict", "--checkpoint", "run", "imgs/a.npy"]


# -- 1. an existing file is never overwritten by accident, a checkpoint or run file never ------------
@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_eval_json_onto_the_checkpoint_is_refused(tmp: Path, capsys: pytest.CaptureFixture, extra: list[str]) -> None:
    argv = ["eval", "--checkpoint", "run", "--json", "run/checkpoints/last.pt", *extra]
    line = refused(argv, capsys, tmp)
    assert line == "--json run/checkpoints/last.pt is a checkpoint; refusing to overwrite it, even with --overwrite"


@pytest.mark.parametrize("target", ["run/summary.json", "run/config.yaml", "run/checkpoints/notes.txt"])
def test_eval_json_onto_a_run_file_is_refused_even_with_overwrite(
    tmp: Path, capsys: pytest.CaptureFixture, target: str
) -> None:
    Path(target).write_text("kept\n") if not Path(target).exists() else None
    line = refused(["eval", "--checkpoint", "run", "--json", target, "--overwrite"], capsys, tmp)
    assert line.startswith(f"--json {target} is ") and "run run" in line and "even with --overwrite" in line


def test_eval_json_replaces_an_existing_file_only_with_overwrite(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("m.json").write_text("old\n")
    line = refused(["eval", "--checkpoint", "run", "--json", "m.json"], capsys, tmp)
    assert line == "--json m.json already exists; refusing to overwrite it (add --overwrite or choose another path)"
    assert main(["eval", "--checkpoint", "run", "--json", "m.json", "--overwrite"]) == 0
    assert "metrics" in json.loads(Path("m.json").read_text())
    assert not list(tmp.glob("m.json.*.tmp"))


def test_export_onto_an_existing_file_is_refused(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("w.safetensors").write_bytes(b"someone else's weights")
    line = refused(["export", "--checkpoint", "run", "--out", "w.safetensors"], capsys, tmp)
    assert line.startswith("--out w.safetensors already exists; refusing to overwrite it")


def test_predict_replaces_its_files_only_with_overwrite(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*PREDICT, "--out", "pred", "--save-npy"]) == 0
    line = refused([*PREDICT, "--out", "pred"], capsys, tmp)
    assert line == (
        "--out pred: pred/a_pred.png already exists; refusing to overwrite it (add --overwrite or choose another path)"
    )
    Path("pred/a_pred.png").unlink()
    line = refused([*PREDICT, "--out", "pred", "--save-npy"], capsys, tmp)  # the arrays are checked too
    assert line.startswith("--out pred: pred/a_seg.npy already exists")
    assert main([*PREDICT, "--out", "pred", "--save-npy", "--overwrite"]) == 0
    assert Path("pred/a_pred.png").is_file() and np.load("pred/a_depth.npy").shape == (32, 40)


def test_speed_json_onto_an_existing_file_is_refused(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("s.json").write_text("old\n")
    line = refused(["speed", "--json", "s.json"], capsys, tmp)
    assert line.startswith("--json s.json already exists; refusing to overwrite it")


# -- 2. symbolic links ---------------------------------------------------------------------------------
def test_predict_never_writes_through_a_link(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("victim.txt").write_text("precious\n")
    Path("pred").mkdir()
    os.symlink("../victim.txt", "pred/a_pred.png")
    for extra in ([], ["--overwrite"]):
        line = refused([*PREDICT, "--out", "pred", *extra], capsys, tmp)
        assert line == (
            "--out pred: pred/a_pred.png is a symbolic link; refusing to write through it "
            "(remove it or choose another path)"
        )
    assert Path("victim.txt").read_text() == "precious\n"


def test_eval_json_never_writes_through_a_link(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("victim.txt").write_text("precious\n")
    os.symlink("victim.txt", "m.json")
    line = refused(["eval", "--checkpoint", "run", "--json", "m.json", "--overwrite"], capsys, tmp)
    assert line.startswith("--json m.json is a symbolic link; refusing to write through it")


@pytest.mark.parametrize("name", ["plots", "checkpoints", "metrics.jsonl", "summary.json", "plots/metrics.png"])
def test_resume_never_writes_through_a_link_in_the_run(tmp: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    """A run's folder or file replaced by a link to elsewhere: refused before any work, the target untouched."""
    entry = tmp / "run" / name
    elsewhere = tmp / "elsewhere" / entry.name
    elsewhere.parent.mkdir()
    shutil.move(entry, elsewhere)
    os.symlink(elsewhere, entry)
    line = refused(["train", "--resume", "--out", "run", "--epochs", "1", "--quiet"], capsys, tmp)
    assert line == f"--out run: {Path('run') / name} is a symbolic link; refusing to write through it " + (
        "(remove it or choose another path)"
    )


def test_bench_never_writes_through_a_link(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("victim.txt").write_text("precious\n")
    Path("b").mkdir()
    os.symlink("../victim.txt", "b/.lock")
    line = refused(["bench", "--out", "b", "--epochs", "0"], capsys, tmp)
    assert line.startswith("--out b: b/.lock is a symbolic link; refusing to write through it")


# -- 3. a full disk: one line naming the path, exit 1, no partial file ----------------------------------
class _FullDisk(io.FileIO):
    def write(self, b: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write's temp file fails as a full disk does."""
    real_open = open

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and str(path).endswith(".tmp"):
            return _FullDisk(path, mode)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["eval", "--checkpoint", "run", "--json", "out/m.json"], "out/m.json"),
        ([*PREDICT, "--out", "out"], "out/a_pred.png"),
    ],
)
def test_a_full_disk_names_the_path_and_leaves_no_file(
    tmp: Path, capsys: pytest.CaptureFixture, full_disk: None, argv: list[str], path: str
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"densemtl: error: cannot write {path}: no space left on device; nothing was written\n"
    assert not [p for p in Path("out").rglob("*") if p.is_file()] if Path("out").exists() else True


def test_a_full_disk_at_a_prediction_array(
    tmp: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The panel is written, then the first array meets a full disk: the panel stays, no array file."""
    real = atomic.atomic_write

    def no_room(f: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def arrays_fail(path: Path, write: Any, what: str, kept: str) -> None:
        real(path, no_room if path.suffix == ".npy" else write, what, kept)

    monkeypatch.setattr(atomic, "atomic_write", arrays_fail)
    assert main([*PREDICT, "--out", "out", "--save-npy"]) == 1
    err = capsys.readouterr().err
    assert err == "densemtl: error: cannot write out/a_seg.npy: no space left on device; nothing was written\n"
    assert sorted(p.name for p in Path("out").iterdir()) == ["a_pred.png"]  # no partial or 0-byte array


def test_an_unanticipated_os_error_is_one_line_with_one_colon(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from densemtl.cli import inspect_cmd

    def fail(args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(inspect_cmd, "run_eval", fail)
    assert main(["eval", "--checkpoint", "x.pt"]) == 1
    assert capsys.readouterr().err == "densemtl: error: No space left on device\n"

    def fail_named(args: object) -> int:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), "some/file")

    monkeypatch.setattr(inspect_cmd, "run_eval", fail_named)
    assert main(["eval", "--checkpoint", "x.pt"]) == 1
    assert capsys.readouterr().err == "densemtl: error: some/file: Permission denied\n"


# -- 4. an empty --out -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", ""],
        ["bench", "--out", ""],
        ["data", "synth", "--out", ""],
        ["data", "convert", "nyuv2", "raw", "--out", ""],
        [*PREDICT, "--out", ""],
        ["export", "--checkpoint", "run", "--out", ""],
        ["eval", "--checkpoint", "run", "--json", ""],
        ["speed", "--json", ""],
    ],
    ids=lambda a: "-".join(x for x in a if x.isalpha())[:40],
)
def test_an_empty_output_path_is_refused(tmp: Path, capsys: pytest.CaptureFixture, argv: list[str]) -> None:
    flag = "--json" if "--json" in argv else "--out"
    line = refused(argv, capsys, tmp)
    assert line == f"{flag} is empty; give a path (an empty one would write into the current folder)"


# -- 5. a refused bench leaves no folder ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "foo"], "tasks 'foo' is invalid for the synthetic dataset"),
        (["--n-train", "1"], "bench: the training split has 1 sample(s)"),
        (["--size", "16x16", "--arch-arg", "depth_stages=5"], "--size 16x16 does not fit architecture"),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_a_refused_bench_leaves_nothing(
    tmp: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str, existing: bool
) -> None:
    if existing:
        Path("b").mkdir()
    line = refused(["bench", "--out", "b", "--epochs", "0", "--n-val", "2", *extra], capsys, tmp)
    assert line.startswith(message)
    assert (Path("b").is_dir() and not any(Path("b").iterdir())) if existing else not Path("b").exists()


# -- 6. predict takes a folder -----------------------------------------------------------------------------
def test_predict_takes_a_folder_of_images(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp / "imgs" / "notes.txt").write_text("not an image\n")
    (tmp / "imgs" / "sub").mkdir()
    assert main(["predict", "--checkpoint", "run", "imgs", "--out", "pred"]) == 0
    out = capsys.readouterr().out
    assert out.index("pred/a_pred.png") < out.index("pred/b_pred.png")  # sorted
    assert sorted(p.name for p in Path("pred").iterdir()) == ["a_pred.png", "b_pred.png"]


def test_predict_refuses_an_empty_folder(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    Path("empty").mkdir()
    line = refused(["predict", "--checkpoint", "run", "empty", "--out", "pred"], capsys, tmp)
    assert line.startswith("folder empty holds no image (.png, .jpg, .jpeg, .npy, .tif, .tiff)")


def test_predict_never_overwrites_an_input(tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """``--out`` the images' own folder: an array named like an input (``a_depth.npy``) is refused,
    even with --overwrite."""
    shutil.copy("imgs/a.npy", "imgs/a_depth.npy")
    argv = ["predict", "--checkpoint", "run", "imgs", "--out", "imgs", "--save-npy", "--overwrite"]
    line = refused(argv, capsys, tmp)
    assert line == "--out imgs: imgs/a_depth.npy is one of the inputs; refusing to overwrite it"
