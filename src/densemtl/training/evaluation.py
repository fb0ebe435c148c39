"""Evaluating a model over a whole split with the streaming metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from densemtl.metrics import StreamingMetrics
from densemtl.plugin_contracts import check_outputs


def move(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable[dict[str, Tensor]],
    tasks: tuple[str, ...],
    num_classes: int,
    device: torch.device,
    *,
    progress: bool = False,
    desc: str = "eval",
    task_args: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` over every batch of ``loader`` (``densemtl.metrics.evaluate`` shape);
    ``task_args`` are the dataset's knobs of its tasks' metrics (NYUD's edge tolerance)."""
    was_training = model.training
    model.eval()
    meter = StreamingMetrics(tasks, num_classes, task_args)
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, dynamic_ncols=True):
        batch = move(batch, device)
        preds = model(batch["image"])
        check_outputs(model, preds, batch, tasks)  # a user's model: one line naming it
        meter.update({t: preds[t].float() for t in tasks}, batch)
    model.train(was_training)
    return meter.compute()


def evaluate_members(
    members: Sequence[Any],
    loader: Iterable[dict[str, Tensor]],
    tasks: Sequence[str],
    num_classes: int,
    device: torch.device,
    progress: bool,
    task_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validation metrics of every member of a run ("val" for the main network, "peer_val", ...)
    and, with several members, of their ensemble ("ensemble_val")."""
    from densemtl.training.ensemble import Ensemble

    nets: list[tuple[str, nn.Module]] = [(m.key("val"), m.model) for m in members]
    if len(members) > 1:
        nets.append(("ensemble_val", Ensemble(*(m.model for m in members))))
    return {
        key: evaluate_model(
            net, loader, tuple(tasks), num_classes, device, progress=progress, desc="validate", task_args=task_args
        )
        for key, net in nets
    }
