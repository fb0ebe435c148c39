"""Checkpoint IO: atomic writes that fail with one line and keep the previous file, stale temp
files removed, truncated or foreign files refused, and safetensors export for sharing."""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from densemtl import atomic
from densemtl.cli.main import main
from densemtl.errors import ConfigError, RuntimeFault
from densemtl.training.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    load_model,
    remove_stale_temps,
    save_checkpoint,
    temp_path,
)


def _state(value: float = 1.0, n: int = 1000) -> dict[str, Any]:
    return {"config": {"arch": "x"}, "model": {"w": torch.full((n,), value)}, "epoch": int(value)}


def _temps(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tmp"))


class _FullDisk(io.FileIO):
    """A file that takes ``room`` bytes and then fails every write with ``err``, as a full disk does."""

    def __init__(self, path: Any, mode: str, room: int, err: int) -> None:
        super().__init__(path, mode)
        self.room, self.err = room, err

    def write(self, b: Any) -> int:
        n = len(memoryview(b))
        if n > self.room:
            raise OSError(self.err, os.strerror(self.err))
        self.room -= n
        return super().write(b)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``full_disk(room=..., err=..., match=...)``: writes of temp files whose name contains
    ``match`` fail after ``room`` bytes (torch then raises its ``inline_container.cc`` error)."""

    def install(room: int = 100, err: int = errno.ENOSPC, match: str = "") -> None:
        real_open = open

        def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if "w" in mode and match in Path(path).name and str(path).endswith(".tmp"):
                return _FullDisk(path, mode, room, err)
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(atomic, "open", fake_open, raising=False)

    return install


# -- atomic writes ------------------------------------------------------------------------------
def test_save_then_load_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    assert load_checkpoint(path)["epoch"] == 2
    assert not _temps(path.parent)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, full_disk: Callable[..., None], err: int) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))
    before = path.read_bytes()
    full_disk(room=200, err=err)
    with pytest.raises(RuntimeFault) as info:
        save_checkpoint(path, _state(2, n=100_000))
    msg = str(info.value)
    assert str(path) in msg and os.strerror(err).lower() in msg and "intact" in msg
    assert "\n" not in msg
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert not _temps(tmp_path)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_an_unwritable_place_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(1))

    def refuse(*_: object) -> None:
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(RuntimeFault, match=os.strerror(err).lower()):
        save_checkpoint(path, _state(2))
    with pytest.raises(RuntimeFault, match="metrics.jsonl"):
        atomic_write_text(tmp_path / "metrics.jsonl", "{}\n")
    assert load_checkpoint(path)["epoch"] == 1 and not _temps(tmp_path)


def test_the_first_checkpoint_failing_says_nothing_was_written(tmp_path: Path, full_disk: Callable[..., None]) -> None:
    full_disk()
    with pytest.raises(RuntimeFault, match="no checkpoint was written"):
        save_checkpoint(tmp_path / "last.pt", _state(1, n=10_000))
    assert not list(tmp_path.iterdir())


def test_atomic_write_text_keeps_the_old_text(tmp_path: Path, full_disk: Callable[..., None]) -> None:
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "one\n")
    full_disk(room=3)
    with pytest.raises(RuntimeFault, match=r"metrics\.jsonl: no space left on device; its previous contents"):
        atomic_write_text(path, "one\ntwo\n")
    assert path.read_text() == "one\n" and not _temps(tmp_path)


def test_a_file_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file")
    with pytest.raises(RuntimeFault, match=r"run is a file, not a directory; no checkpoint was written"):
        save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", _state(1))
    assert (tmp_path / "run").read_text() == "a file"


def test_a_bug_in_the_state_is_not_reported_as_a_disk_fault(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever pickling raises
        save_checkpoint(tmp_path / "last.pt", {"model": {}, "config": {}, "f": lambda: 0})
    assert not isinstance(info.value, RuntimeFault)
    assert not list(tmp_path.iterdir())


# -- stale temps and bad files ------------------------------------------------------------------
def test_stale_temps_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state(3))
    host = temp_path(path).name.split(".")[-3]
    dead = os.getpid() + 1
    while True:  # a pid no process has
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
        except OSError:
            dead += 1
    stale = [path.with_name(f"last.pt.{host}.{dead}.tmp"), path.with_name("last.pt.tmp")]
    stale.append(path.with_name(f"metrics.jsonl.{host}.{dead}.tmp"))
    live = [path.with_name(f"last.pt.{host}.{os.getppid()}.tmp"), path.with_name(f"last.pt.otherhost.{dead}.tmp")]
    for p in stale + live:
        p.write_bytes(b"half a checkpoint")
    assert load_checkpoint(path)["epoch"] == 3
    assert all(not p.exists() for p in stale) and all(p.exists() for p in live)
    assert remove_stale_temps(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, "half"])
def test_truncated_or_garbage_checkpoint_is_one_line(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "last.pt"
    if content == "half":
        save_checkpoint(path, _state(1, n=10_000))
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is truncated or not a checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


# -- export -------------------------------------------------------------------------------------
@pytest.fixture
def trained(tiny_run_trained: Path) -> Path:
    """The session's run trained one epoch (read only: the tests export it and evaluate it)."""
    return tiny_run_trained / "run"


def test_export_gives_identical_predictions(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert not _temps(tmp_path)
    a, cfg_a, state_a = load_model(trained)
    b, cfg_b, state_b = load_model(out)
    assert cfg_a == cfg_b
    for key in ("tasks", "num_classes", "size", "epoch"):
        assert list(state_a[key]) == list(state_b[key]) if key in ("tasks", "size") else state_a[key] == state_b[key]
    x = torch.rand(2, 3, *state_a["size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pa, pb = a(x), b(x)
    assert all(torch.equal(pa[t], pb[t]) for t in state_a["tasks"])
    metrics = []
    for ck in (trained, out):
        js = tmp_path / f"{ck.name}.json"
        assert main(["eval", "--checkpoint", str(ck), "--json", str(js)]) == 0
        metrics.append(json.loads(js.read_text()))
    assert metrics[0] == metrics[1]


def test_export_refuses_to_overwrite(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"precious")
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already exists" in err
    assert out.read_bytes() == b"precious"


def test_bad_safetensors_are_one_line(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    assert main(["export", "--checkpoint", str(trained), "--out", str(good)]) == 0
    data = good.read_bytes()
    cases = {
        "truncated.safetensors": (data[: len(data) // 2], "truncated or not a safetensors"),
        "garbage.safetensors": (b"\x00" * 64, "truncated or not a safetensors"),
        "empty.safetensors": (b"", "truncated or not a safetensors"),
    }
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    cases[foreign.name] = (foreign.read_bytes(), "not a densemtl export")
    capsys.readouterr()
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert main(["eval", "--checkpoint", str(path)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and name in err, err


# -- through the CLI ----------------------------------------------------------------------------
def test_train_whose_checkpoint_cannot_be_written_exits_1(
    tmp_path: Path, tiny_args: list[str], full_disk: Callable[..., None], capsys: pytest.CaptureFixture
) -> None:
    full_disk(match="last.pt")
    out = tmp_path / "run"
    assert main(["train", *tiny_args, "--n-train", "4", "--diagnostics-every", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(out / "checkpoints" / "last.pt") in err and "no space left on device" in err
    assert not list(out.rglob("*.tmp"))
