"""Checkpoints: everything needed to resume a run exactly, or to rebuild its model alone (:func:`load_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from densemtl.errors import ConfigError
from densemtl.models import MultiTaskModel
from densemtl.training.builders import create_model, resolve_device
from densemtl.training.config import TrainConfig, build_config


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file then rename), so an interrupted save never corrupts a run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a missing or unreadable file is a one-line error."""
    p = Path(path)
    if p.is_dir():
        cand = p / "checkpoints" / "last.pt"
        if cand.is_file():
            p = cand
        else:
            raise ConfigError(f"checkpoint {p} is a directory without checkpoints/last.pt")
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ConfigError(f"checkpoint {p} cannot be read ({type(e).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ConfigError(f"checkpoint {p} is not a densemtl checkpoint")
    return state


def load_model(path: str | Path, device: str = "cpu") -> tuple[MultiTaskModel, TrainConfig, dict[str, Any]]:
    """(main network in eval mode on ``device``, its config, the checkpoint) from a checkpoint
    file or a run directory; a bad path, file or device is a one-line error."""
    state = load_checkpoint(path)
    cfg = build_config(state["config"])
    model = create_model(cfg.arch, cfg.arch_args, tuple(state["tasks"]), int(state["num_classes"]))
    model.load_state_dict(state["model"])
    model.to(resolve_device(device)).eval()
    return model, cfg, state
