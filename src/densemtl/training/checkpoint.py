"""Checkpoints: everything needed to resume a run exactly, or to rebuild its model alone (:func:`load_model`).

Every write is atomic (:mod:`densemtl.atomic`): a kill or a full disk at any moment leaves either
the old file or the new one, never a torn one; a failed write is a one-line
:class:`~densemtl.errors.RuntimeFault` naming the path and the cause.

Loading never runs code: ``.pt`` files load with ``weights_only=True`` and exported weights are
safetensors. A leftover temp file of a dead writer is ignored and removed.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from densemtl.atomic import TMP_SUFFIX, atomic_write, host_tag, write_cause
from densemtl.atomic import atomic_write_text as atomic_write_text  # re-exported
from densemtl.atomic import temp_path as temp_path  # re-exported
from densemtl.errors import ConfigError
from densemtl.models import MultiTaskModel
from densemtl.training.builders import model_from_state, resolve_device
from densemtl.training.checkpoint_meta import check_state_fields
from densemtl.training.config import TrainConfig

#: Metadata keys of an exported ``.safetensors`` file, each a JSON string.
EXPORT_KEYS = ("config", "tasks", "num_classes", "size", "arch", "epoch")
_SAFETENSORS_FORMAT = "densemtl"


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
        ours = pid.isdigit() and host == host_tag() and not _alive(int(pid))
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
        raise ConfigError(f"checkpoint {p} cannot be read: {write_cause(e)}") from None
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
