"""Checks on the places a command will write, made before it does any work, so that an
unwritable ``--out`` or ``--json`` is one line up front instead of a traceback at the end
(``eval``/``predict`` here; a run directory's own rules in :mod:`densemtl.training.rundir`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from densemtl.errors import ConfigError


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


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path`` as a file the command may write (created with its folders, or overwritten)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder; give a file name")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise ConfigError(f"{flag} {p} is not writable")
    else:
        _check_creatable(p, flag, start=p.parent)
    return p


def check_output_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a folder the command may write files into (created if missing)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a folder")
    _check_creatable(p, flag)
    return p


def fresh_run_dir(cfg: Any) -> Path:
    """A new run directory under ./runs named by the time, dataset, architecture and method."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{cfg.dataset}-{cfg.arch}-{cfg.method}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path
