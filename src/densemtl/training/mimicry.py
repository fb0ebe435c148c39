"""Mimicry losses of deep mutual learning between multi-task networks (MDML).

For network a with peer b, each task t gives a loss pulling a's prediction towards b's (b's
outputs are detached, so no gradient reaches b), on the pixels with valid ground truth; the task
defines it (:meth:`densemtl.tasks.Task.mimicry`): for the built-in tasks, segmentation
τ² · KL(p_b ‖ p_a) per pixel with temperature τ (Hinton et al.), depth L1 between the two
predictions, normals 1 − cos between the two normalised predictions.
Xiao et al., J. Zhejiang Univ. (Eng. Sci.) 2026 (MDML), built as deep mutual learning
(Zhang, Xiang, Hospedales, Lu, CVPR 2018, https://arxiv.org/abs/1706.00384).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from densemtl.tasks import TaskSet, as_task_set


def mimicry_losses(
    preds: Mapping[str, Tensor],
    peer_preds: Mapping[str, Tensor],
    batch: Mapping[str, Tensor],
    tasks: TaskSet | Sequence[str],
    temperature: float = 1.0,
) -> list[Tensor]:
    """The T mimicry losses of ``preds`` towards the (detached) ``peer_preds``, one scalar per task
    of ``tasks`` (the run's TaskSet, or names: their defaults), a list, not a stacked vector, so
    that each task's gradient reaches only its own head."""
    return as_task_set(tasks).mimicry(preds, peer_preds, batch, temperature)
