"""Shared pieces of the hostile-input probe: the Case record, fixture copies and file writers.

Nothing here imports densemtl: the probe runs the densemtl under test only in subprocesses
(``--src``), so that setups never depend on the code being probed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Setup = Callable[[Path], None]

#: Tiny settings for a train command that finishes in seconds on a CPU.
TINY_TRAIN = ["--epochs", "1", "--batch-size", "2", "--quiet"]
SYNTH_TRAIN = ["train", "--dataset", "synthetic", "--n-train", "2", "--n-val", "2", "--size", "32x40", *TINY_TRAIN]
SEGNET_TINY = ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]


@dataclass
class Case:
    """One hostile input: ``setup`` builds its files in a fresh folder (the command's cwd), then
    ``densemtl *argv`` runs there; ``expect`` is ``refuse`` (one ``densemtl: error:`` line, exit 1
    or 2, no traceback, nothing new left behind but ``keeps``) or ``accept`` (exit 0)."""

    name: str
    cls: str
    argv: Sequence[str]
    expect: str = "refuse"
    setup: Setup | None = None
    needs: tuple[str, ...] = ()  # fixtures copied in first: DATA, RUN, EXPORT, NYUD, PASCAL
    env: dict[str, str] = field(default_factory=dict)
    keeps: tuple[str, ...] = ()  # path prefixes a refusal may leave (e.g. a run folder it keeps)
    root_skip: bool = False  # meaningless as root (permission bits do not stop root)
    note: str = ""


def fixture(tmp: Path, name: str, fixtures: Path) -> None:
    src = fixtures / name
    if src.is_dir():
        shutil.copytree(src, tmp / name, symlinks=True)
    else:
        shutil.copy2(src, tmp / name)


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def npsave(path: Path, arr: Any, **kw: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, arr, **kw)


def image(path: Path, arr: np.ndarray, mode: str | None = None, **save: Any) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path, **save)


def rgb(h: int = 32, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_only(path: Path, width: int, height: int, depth: int = 8, colour: int = 2) -> None:
    """A PNG whose IHDR claims ``width``×``height`` and whose data is a few zero bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    write(
        path,
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""),
    )


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text())), indent=2))


def set_key(d: dict, key: str, value: Any) -> dict:
    d[key] = value
    return d


def drop_key(d: dict, key: str) -> dict:
    d.pop(key, None)
    return d


def edit_yaml(path: Path, fn: Callable[[Any], Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(fn(yaml.safe_load(path.read_text())), sort_keys=False))


def edit_ckpt(run: Path, fn: Callable[[dict], Any], names: Sequence[str] = ("last.pt", "best.pt")) -> None:
    """Load each checkpoint of ``run`` (our own file: full unpickling is fine), change it, save it."""
    import torch

    for name in names:
        path = run / "checkpoints" / name
        state = torch.load(path, map_location="cpu", weights_only=False)
        out = fn(state)
        torch.save(state if out is None else out, path)


def edit_export(
    path: Path, meta: Callable[[dict], dict] | None = None, tensors: Callable[[dict], dict] | None = None
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        md = dict(f.metadata() or {})
        ts = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    save_file(tensors(ts) if tensors else ts, str(path), metadata=meta(md) if meta else md)


def chmod0(path: Path) -> None:
    os.chmod(path, 0)


def fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def first(paths: Sequence[Path] | Any) -> Path:
    return sorted(paths)[0]


def chain(*steps: Setup) -> Setup:
    def run(tmp: Path) -> None:
        for step in steps:
            step(tmp)

    return run
