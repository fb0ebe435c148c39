"""Checkpoints: everything needed to resume a run exactly, or to rebuild its model alone (:func:`load_model`).

Every write is atomic: the bytes go to a temp file beside the target (``NAME.HOST.PID.tmp``),
are flushed and fsynced, renamed onto the target, and the directory is fsynced, so a kill or a
full disk at any moment leaves either the old file or the new one, never a torn one. A failed
write is a one-line :class:`RuntimeFault` naming the path and the cause.

Loading never runs code: ``.pt`` files load with ``weights_only=True`` and exported weights are
safetensors. A leftover temp file of a dead writer is ignored and removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from densemtl.errors import ConfigError, RuntimeFault
from densemtl.models import MultiTaskModel
from densemtl.training.builders import model_from_state, resolve_device
from densemtl.training.checkpoint_meta import check_state_fields
from densemtl.training.config import TrainConfig

TMP_SUFFIX = ".tmp"
#: Metadata keys of an exported ``.safetensors`` file, each a JSON string.
EXPORT_KEYS = ("config", "tasks", "num_classes", "size", "arch", "epoch")
_SAFETENSORS_FORMAT = "densemtl"


# -- atomic writes ------------------------------------------------------------------------------
def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def temp_path(path: Path) -> Path:
    """The temp file this process writes ``path`` through: ``NAME.HOST.PID.tmp`` beside it."""
    return path.with_name(f"{path.name}.{_host()}.{os.getpid()}{TMP_SUFFIX}")


def _cause(exc: BaseException) -> str:
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
        raise RuntimeFault(f"cannot write {what}{path}: {_cause(e)}; {kept}") from None
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically; a failed write is a one-line
    :class:`RuntimeFault` and leaves the previous contents intact."""
    p = Path(path)
    kept = "its previous contents are intact" if p.exists() else "nothing was written"
    atomic_write(p, lambda f: f.write(text.encode("utf-8")), "", kept)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file, fsync, rename, fsync the directory): an
    interrupted or failed save never corrupts the previous one. A full disk or an unwritable
    place is a one-line :class:`RuntimeFault` naming the path and the cause."""
    path = Path(path)
    if path.exists():
        kept = "the previous checkpoint and metrics.jsonl are intact: free space and continue with --resume"
    else:
        kept = "no checkpoint was written: free space or choose another --out"
    atomic_write(path, lambda f: torch.save(state, f), "checkpoint ", kept)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp files in ``directory`` left by writers that are gone (killed mid-write):
    ``NAME.HOST.PID.tmp`` of this host whose process has ended, and ``NAME.pt.tmp`` of older
    versions. Another host's temps and a live writer's are left alone (and never read). Returns
    what was removed."""
    removed: list[Path] = []
    try:
        candidates = list(directory.glob(f"*{TMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        rest, _, pid = tmp.name[: -len(TMP_SUFFIX)].rpartition(".")
        _, _, host = rest.rpartition(".")
        ours = pid.isdigit() and host == _host() and not _alive(int(pid))
        if not (ours or tmp.name.endswith(".pt" + TMP_SUFFIX)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass  # not ours to remove (read-only run directory): it is ignored all the same
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing while it loads
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


# -- loading ------------------------------------------------------------------------------------
def is_safetensors(p: Path) -> bool:
    """A safetensors file: ``.safetensors`` suffix, or an 8-byte header length then ``{``."""
    if p.suffix == ".safetensors":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _load_safetensors(p: Path) -> dict[str, Any]:
    """A state from an exported file: ``model`` (the weights) and the metadata, decoded."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for every bad header
        raise ConfigError(f"checkpoint {p} is truncated or not a safetensors file") from None
    missing = [k for k in EXPORT_KEYS if k not in meta]
    if meta.get("format") != _SAFETENSORS_FORMAT or missing:
        raise ConfigError(
            f"checkpoint {p} is a safetensors file but not a densemtl export "
            f"(no {', '.join(missing) or 'format'} metadata); make one with 'densemtl export'"
        )
    try:
        state: dict[str, Any] = {k: json.loads(meta[k]) for k in EXPORT_KEYS}
    except ValueError:
        raise ConfigError(f"checkpoint {p} has unreadable densemtl metadata") from None
    state["model"] = weights
    check_state_fields(state, p)
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``path`` names: itself, or ``RUN/checkpoints/last.pt`` for a run directory."""
    p = Path(path)
    if p.is_dir():
        cand = p / "checkpoints" / "last.pt"
        if cand.is_file():
            return cand
        raise ConfigError(f"checkpoint {p} is a directory without checkpoints/last.pt")
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint (a ``.pt`` file, a run directory, or an exported ``.safetensors``) on the
    CPU without running any code it may carry; a missing, truncated, foreign or unsafe file is a
    one-line :class:`ConfigError`. A stale temp file of an interrupted save is removed."""
    p = resolve_checkpoint(path)
    if is_safetensors(p):
        return _load_safetensors(p)
    remove_stale_temps(p.parent)
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"checkpoint {p} cannot be read: {_cause(e)}") from None
    try:
        with warnings.catch_warnings():  # torch warns (with a source line) on a foreign pickle: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        if "global" in str(e).lower():  # a class or function outside the allowlist: it could run code
            raise ConfigError(
                f"checkpoint {p} cannot be read: it holds objects other than tensors and plain "
                "values, and loading them could run code (refused)"
            ) from None
        raise ConfigError(f"checkpoint {p} is truncated or not a checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"checkpoint {p} is not a densemtl checkpoint")
    check_state_fields(state, p)
    return state


def load_model(path: str | Path, device: str = "cpu") -> tuple[MultiTaskModel, TrainConfig, dict[str, Any]]:
    """(main network in eval mode on ``device``, its config, the checkpoint) from a checkpoint
    file, a run directory or an exported ``.safetensors``; a bad path, file or device is a
    one-line error."""
    state = load_checkpoint(path)
    model, cfg = model_from_state(state, path)
    model.to(resolve_device(device)).eval()
    return model, cfg, state


# -- export -------------------------------------------------------------------------------------
def export_safetensors(state: dict[str, Any], out: str | Path) -> Path:
    """Write the main model's weights of checkpoint ``state`` to ``out`` as safetensors, with the
    config, tasks, classes, size, architecture and epoch as JSON metadata; refuses to overwrite."""
    from safetensors.torch import save

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; refusing to overwrite it (remove it or choose another path)")
    cfg = state["config"]
    meta = {
        "config": cfg,
        "tasks": list(state["tasks"]),
        "num_classes": int(state["num_classes"]),
        "size": list(state["size"]) if state.get("size") else None,
        "arch": cfg.get("arch") if isinstance(cfg, dict) else None,
        "epoch": int(state.get("epoch") or 0),
    }
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    metadata["format"] = _SAFETENSORS_FORMAT
    # Copies: safetensors refuses tensors that share memory (tied weights) or are not contiguous.
    weights = {k: v.detach().clone().contiguous() for k, v in state["model"].items()}
    data = save(weights, metadata=metadata)
    atomic_write(out, lambda f: f.write(data), "", "nothing was written")
    return out
