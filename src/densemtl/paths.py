"""Checks on the places a command will write, made before it does any work, so that an
unwritable ``--out`` or ``--json`` is one line up front instead of a traceback at the end
(``eval``/``predict``/``speed`` here; a run directory's own rules in :mod:`densemtl.training.rundir`).

The rules (docs/errors.md, "Outputs"): an empty path is refused; an existing file is never
replaced unless the command's ``--overwrite`` says so, and never (even then) a checkpoint or a
file of a run or bench folder; nothing is written through a symbolic link densemtl did not make;
every file is written atomically (:func:`write_bytes`), so a full disk leaves no partial file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from densemtl.errors import ConfigError

#: Suffixes of the files densemtl never overwrites with another output, even with ``--overwrite``.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
#: A run's or bench's own files (beside its config.yaml, metrics.jsonl or bench.yaml), and its folders.
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "results.csv", "results.md", "bench.yaml")
RUN_FOLDERS = ("checkpoints", "plots", "tensorboard", "runs")
#: What ``predict`` reads from a folder given as an input (non-recursive, sorted).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".tif", ".tiff")


def existing_ancestor(path: Path) -> Path:
    """The nearest existing folder-or-file at or above ``path`` (what a mkdir -p would start from)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(target: Path, flag: str, start: Path | None = None) -> None:
    """``target`` can be created: the nearest existing ancestor of ``start`` (default ``target``)
    is a writable folder."""
    base = existing_ancestor(target if start is None else start)
    if not base.is_dir():
        raise ConfigError(f"{flag} {target}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {target}: {base} is not writable")


def refuse_empty(value: str | None, flag: str) -> None:
    """An empty path (``--out ''``) would mean the current folder: refuse it."""
    if value is not None and not str(value).strip():
        raise ConfigError(f"{flag} is empty; give a path (an empty one would write into the current folder)")


def _holds_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("config.yaml", "metrics.jsonl", "bench.yaml"))


def protected(path: Path) -> str | None:
    """Why ``path`` must never be replaced by another command's output (even with ``--overwrite``):
    a checkpoint, a run's or bench's own file, or anything inside a run's folders; else None."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "a checkpoint"
    if path.name in RUN_FILES and _holds_run(path.parent):
        return f"a file of the run {path.parent}"
    for folder in path.parents:
        if folder.name in RUN_FOLDERS and _holds_run(folder.parent):
            return f"inside the run {folder.parent}"
    return None


def check_not_linked(path: Path, what: str) -> None:
    """``path`` must not be a symbolic link (densemtl never makes one, so one there was put there
    by someone else and writing would go through it): a one-line refusal naming the link."""
    if path.is_symlink():
        raise ConfigError(
            f"{what}{path} is a symbolic link; refusing to write through it (remove it or choose another path)"
        )


def check_replaceable(path: Path, flag: str, overwrite: bool, where: str = "") -> None:
    """An existing ``path`` may be replaced only with ``overwrite`` and never when :func:`protected`;
    ``where`` prefixes the message (``"--out D: "`` for a file inside the folder given)."""
    what = where or f"{flag} "
    check_not_linked(path, what)
    if path.is_dir():
        raise ConfigError(f"{what}{path} is a folder; give a file name" if not where else f"{what}{path} is a folder")
    if not path.exists():
        return
    why = protected(path)
    if why:
        raise ConfigError(f"{what}{path} is {why}; refusing to overwrite it, even with --overwrite")
    if not overwrite:
        raise ConfigError(
            f"{what}{path} already exists; refusing to overwrite it (add --overwrite or choose another path)"
        )
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}{path} is not writable")


def check_into_folder(out: Path, targets: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """The files a command will write into the folder ``--out out``: each replaceable
    (:func:`check_replaceable`) and none of them one of the command's ``inputs``."""
    given = {p.resolve() for p in inputs if p.exists()}
    for target in targets:
        if target.resolve() in given:
            raise ConfigError(f"--out {out}: {target} is one of the inputs; refusing to overwrite it")
        check_replaceable(target, "--out", overwrite, f"--out {out}: ")


def check_output_file(path: str | Path, flag: str, overwrite: bool = False) -> Path:
    """``path`` as a file the command may write: created with its folders, or an existing one
    replaced under :func:`check_replaceable`'s rule."""
    refuse_empty(str(path), flag)
    p = Path(path)
    check_replaceable(p, flag, overwrite)
    if not p.exists():
        _check_creatable(p, flag, start=p.parent)
    return p


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a folder the command may write files into (created if missing)."""
    refuse_empty(str(path), flag)
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a folder")
    _check_creatable(p, flag)
    return p


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``path`` atomically (a temp file beside it, then a rename: a final-component link is
    replaced, never followed); a full disk is a one-line RuntimeFault naming the path, and leaves
    no partial file."""
    from densemtl.atomic import atomic_write

    p = Path(path)
    kept = "its previous contents are intact" if p.exists() else "nothing was written"
    atomic_write(p, lambda f: f.write(data), "", kept)


def image_inputs(items: list[str]) -> list[Path]:
    """``predict``'s inputs: each file as given, each folder as its image files (sorted, not
    recursive); a folder with none is refused."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(c for c in p.iterdir() if c.suffix.lower() in IMAGE_SUFFIXES and c.is_file())
        if not found:
            kinds = ", ".join(IMAGE_SUFFIXES)
            raise ConfigError(f"folder {p} holds no image ({kinds}); give image files or a folder of them")
        out.extend(found)
    return out


def fresh_run_dir(cfg: Any) -> Path:
    """A new run directory under ./runs named by the time, dataset, architecture and method."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{cfg.dataset}-{cfg.arch}-{cfg.method}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path
