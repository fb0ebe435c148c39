"""Atomic file writes: a kill or a full disk at any moment leaves the old file or the new one.

The bytes go to a temp file beside the target (``NAME.HOST.PID.tmp``), are flushed and fsynced,
renamed onto the target, and the directory is fsynced. A failed write is a one-line
:class:`~densemtl.errors.RuntimeFault` naming the path and the cause. Checkpoints, run files,
plots and predictions are all written this way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO

from densemtl.errors import RuntimeFault

TMP_SUFFIX = ".tmp"


def host_tag() -> str:
    """This host's name as temp file names carry it (no dots)."""
    return socket.gethostname().replace(".", "_") or "host"


def temp_path(path: Path) -> Path:
    """The temp file this process writes ``path`` through: ``NAME.HOST.PID.tmp`` beside it."""
    return path.with_name(f"{path.name}.{host_tag()}.{os.getpid()}{TMP_SUFFIX}")


def write_cause(exc: BaseException) -> str:
    """A short reason for a failed write: the OSError's text if there is one anywhere in the chain
    (torch wraps it in ``RuntimeError: [enforce fail at inline_container.cc...]``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.strerror or seen.errno):
            text = seen.strerror or os.strerror(seen.errno or 0)
            return text[:1].lower() + text[1:]
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"write failed ({text[:120]})"


def _is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an I/O failure of the write (as opposed to a bug in what is written)."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        markers = ("inline_container", "PytorchStreamWriter", "file write failed", "iostream")
        return any(m in text for m in markers) or isinstance(exc.__context__, OSError)
    return False


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    """Create ``path``'s directory; a file in the way is ENOTDIR naming that file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), path.parent)
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a directory") from None


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], what: str, kept: str) -> None:
    """Write ``path`` through ``write(file)`` atomically. On an I/O failure remove the temp file,
    leave ``path`` as it was, and raise a :class:`RuntimeFault` ``cannot write {what}{path}:
    {cause}; {kept}`` (``what``: ``""`` or a word and a space)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        _make_parent(path)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not _is_write_failure(e):
            raise
        raise RuntimeFault(f"cannot write {what}{path}: {write_cause(e)}; {kept}") from None
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically; a failed write is a one-line
    :class:`RuntimeFault` and leaves the previous contents intact."""
    p = Path(path)
    kept = "its previous contents are intact" if p.exists() else "nothing was written"
    atomic_write(p, lambda f: f.write(text.encode("utf-8")), "", kept)
