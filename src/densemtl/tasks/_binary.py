"""What binary per-pixel tasks (``edge``, ``saliency``) share: targets (B,1,H,W) float, 1 = positive,
0 = negative, any other value (-1, 255, NaN) ignored; predictions are logits (B,1,H,W).

:class:`BinaryMapTask` gives such a task its one output channel, validity mask, mimicry loss
(MDML), ensemble and grey pictures; the functions below are those rules on their own. This module
registers no task (its name starts with ``_``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densemtl.tasks.base import Task, zero_loss


def binary_valid(target: Tensor) -> Tensor:
    """Valid pixels of a binary target: 0 or 1 (a value in [0, 1]); shape as ``target``."""
    return (target >= 0) & (target <= 1)


def binary_mimicry(pred: Tensor, peer: Tensor, target: Tensor, temperature: float) -> Tensor:
    """τ² · mean over valid pixels of KL(Bernoulli(σ(peer/τ)) ‖ Bernoulli(σ(pred/τ)))."""
    mask = binary_valid(target)
    if not mask.any():
        return zero_loss(pred)
    x, q = pred / temperature, torch.sigmoid(peer.detach() / temperature)
    # KL = q·(log q − log p) + (1−q)·(log(1−q) − log(1−p)); the p terms are BCE-with-logits
    # (F.binary_cross_entropy would refuse to run under autocast, hence xlogy for the q terms)
    neg_entropy = torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q)
    kl = F.binary_cross_entropy_with_logits(x, q, reduction="none") + neg_entropy
    return kl[mask].mean() * temperature**2


def binary_ensemble(preds: list[Tensor]) -> Tensor:
    """The logit of the members' mean probability (probabilities clamped to [1e-6, 1 − 1e-6])."""
    total = torch.sigmoid(preds[0])
    for p in preds[1:]:
        total = total + torch.sigmoid(p)
    return torch.logit(total / len(preds), eps=1e-6)


def grey_probability(pred: Tensor) -> np.ndarray:
    """(H,W,3) uint8 grey map of σ(logit) of a (1,H,W) prediction (white = 1)."""
    p = torch.sigmoid(pred.detach().float().cpu()[0]).numpy()
    grey = (np.nan_to_num(p) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def grey_target(target: Tensor) -> np.ndarray:
    """(H,W,3) uint8 grey map of a (1,H,W) binary target; ignored pixels black."""
    t = target.detach().float().cpu()[0]
    grey = torch.where(binary_valid(t), t, torch.zeros_like(t)).numpy()
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


class BinaryMapTask(Task):
    """A task predicting one logit per pixel against a binary target (see the module docstring).

    One output channel; valid pixels are those labelled 0 or 1. Mimicry (MDML): the binary KL
    divergence to the peer's probabilities over the valid pixels. Ensemble: the mean probability,
    as a logit. Pictures: σ(logit) as a grey map (white = positive); a target's positives white,
    the rest (and ignored pixels) black. Subclasses give the loss, metrics and columns.
    """

    def channels(self, num_classes: int) -> int:
        return 1

    def valid(self, target: Tensor) -> Tensor:
        return binary_valid(target)

    def mimicry(self, pred: Tensor, peer: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
        return binary_mimicry(pred, peer, target, temperature)

    def ensemble(self, preds: list[Tensor]) -> Tensor:
        return binary_ensemble(preds)

    def colour(self, pred: Tensor, num_classes: int, reference: Tensor | None = None) -> np.ndarray:
        """σ(logit) as a grey map: white = certainly positive."""
        return grey_probability(pred)

    def colour_target(self, target: Tensor, num_classes: int) -> np.ndarray:
        """Positive pixels white, the rest (and ignored pixels) black."""
        return grey_target(target)
