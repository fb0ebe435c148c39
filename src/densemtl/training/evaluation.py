"""Evaluating a model over a whole split with the streaming metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from densemtl.metrics import StreamingMetrics
from densemtl.plugin_contracts import check_outputs
from densemtl.tasks import TaskSet, as_task_set


def move(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable[dict[str, Tensor]],
    tasks: TaskSet | Sequence[str],
    num_classes: int,
    device: torch.device,
    *,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` over every batch of ``loader`` (``densemtl.metrics.evaluate`` shape);
    ``tasks`` the run's TaskSet, whose knobs set the metrics (NYUD's edge tolerance); names: the
    tasks' defaults."""
    was_training = model.training
    model.eval()
    task_set = as_task_set(tasks)
    meter = StreamingMetrics(task_set, num_classes)
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, dynamic_ncols=True):
        batch = move(batch, device)
        preds = model(batch["image"])
        check_outputs(model, preds, batch, task_set.names)  # a user's model: one line naming it
        meter.update({t: preds[t].float() for t in task_set}, batch)
    model.train(was_training)
    return meter.compute()


def evaluate_members(
    members: Sequence[Any],
    loader: Iterable[dict[str, Tensor]],
    tasks: TaskSet,
    num_classes: int,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Validation metrics of every member of a run ("val" for the main network, "peer_val", ...)
    and, with several members, of their ensemble ("ensemble_val"), by the run's ``tasks``."""
    from densemtl.training.ensemble import Ensemble

    nets: list[tuple[str, nn.Module]] = [(m.key("val"), m.model) for m in members]
    if len(members) > 1:
        nets.append(("ensemble_val", Ensemble(*(m.model for m in members), tasks=tasks)))
    return {
        key: evaluate_model(net, loader, tasks, num_classes, device, progress=progress, desc="validate")
        for key, net in nets
    }
