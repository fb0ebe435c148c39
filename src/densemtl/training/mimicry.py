"""Mimicry losses of deep mutual learning between two multi-task networks (MDML).

For network a with peer b, per task t (b's outputs are detached, so no gradient reaches b):
- segmentation: KL(p_b || p_a) per pixel with temperature tau, times tau^2 (Hinton et al.),
  averaged over pixels whose label is not -1;
- depth: L1 between the two predictions on pixels with valid ground-truth depth;
- normals: 1 - cos between the two L2-normalised predictions on pixels with valid normals.
Xiao et al., J. Zhejiang Univ. (Eng. Sci.) 2026 (MDML), built as deep mutual learning
(Zhang, Xiang, Hospedales, Lu, CVPR 2018, https://arxiv.org/abs/1706.00384).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from densemtl.tasks import depth_valid, normal_valid


def _zero(x: Tensor) -> Tensor:
    return x.sum() * 0.0


def seg_mimicry(logits: Tensor, peer_logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """tau^2 * mean over labelled pixels of KL(softmax(peer/tau) || softmax(logits/tau))."""
    mask = labels >= 0
    if not mask.any():
        return _zero(logits)
    log_p = F.log_softmax(logits / temperature, dim=1)
    log_q = F.log_softmax(peer_logits.detach() / temperature, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)  # (B,H,W)
    return kl[mask].mean() * temperature**2


def depth_mimicry(pred: Tensor, peer: Tensor, target: Tensor) -> Tensor:
    """Mean |pred - peer| over pixels with valid ground-truth depth."""
    mask = depth_valid(target)
    if not mask.any():
        return _zero(pred)
    return (pred[mask] - peer.detach()[mask]).abs().mean()


def normal_mimicry(pred: Tensor, peer: Tensor, target: Tensor) -> Tensor:
    """Mean 1 - cos(pred, peer) over pixels with valid ground-truth normals (both normalised)."""
    mask = normal_valid(target)
    if not mask.any():
        return _zero(pred)
    cos = (F.normalize(pred, dim=1) * F.normalize(peer.detach(), dim=1)).sum(dim=1)
    return (1.0 - cos[mask]).mean()


def mimicry_losses(
    preds: dict[str, Tensor],
    peer_preds: dict[str, Tensor],
    batch: dict[str, Tensor],
    tasks: tuple[str, ...],
    temperature: float = 1.0,
) -> list[Tensor]:
    """The T mimicry losses of ``preds`` towards the (detached) ``peer_preds``, one scalar per task
    (a list, not a stacked vector, so that each task's gradient reaches only its own head)."""
    out = []
    for t in tasks:
        if t == "seg":
            out.append(seg_mimicry(preds[t], peer_preds[t], batch[t], temperature))
        elif t == "depth":
            out.append(depth_mimicry(preds[t], peer_preds[t], batch[t]))
        elif t == "normal":
            out.append(normal_mimicry(preds[t], peer_preds[t], batch[t]))
        else:
            raise ValueError(f"no mimicry loss for task {t!r}")
    return out
