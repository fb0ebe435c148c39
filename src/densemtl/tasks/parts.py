"""Human parts: ``parts`` targets (B,H,W) long, 0 = background, 1 … P = parts (PASCAL-MT: head,
torso, upper arm, lower arm, upper leg, lower leg), -1 = ignore; logits (B,P+1,H,W).

Metric (the convention of ASTMT's ``eval_human_parts``, which MTI-Net and InvPT reuse): only
images that contain a person count, i.e. whose target holds some part label > 0. (ASTMT skips an
image whose target is one single value, 0 or 255; PASCAL-MT's targets have no ignored pixels, so
that is the same images; here a person-free image that padding gave -1 pixels is skipped too.)
Over the counted images' valid pixels,

    IoU_c = TP_c / max(TP_c + FP_c + FN_c, 1e-8),   miou = mean of IoU_c over all P + 1 classes

so a class never seen counts as 0 (unlike ``seg``'s mIoU, which skips it), as ASTMT does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from densemtl.errors import ConfigError
from densemtl.tasks import register
from densemtl.tasks.base import Column
from densemtl.tasks.seg import Segmentation, colour_labels, seg_confusion

PART_NAMES: tuple[str, ...] = ("background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg")


class PartsAccumulator:
    """The confusion matrix (int64) of the images with a person, and how many there were."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.images = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        person = (target > 0).flatten(1).any(dim=1)  # (B,)
        if person.any():
            self.conf += seg_confusion(pred[person], target[person], self.num_classes)
            self.images += int(person.sum())

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {"miou": float("nan")}
        conf = self.conf.to(torch.float64)
        tp = conf.diagonal()
        denom = (conf.sum(dim=0) + conf.sum(dim=1) - tp).clamp_min(1e-8)
        return {"miou": float((tp / denom).mean())}


@register("parts")
class Parts(Segmentation):
    """Per-pixel human part (``num_parts`` parts + background, 6 + 1 by default: a knob, since the
    dataset's ``num_classes`` is its segmentation's); masked cross-entropy as ``seg``.

    Mimicry and ensemble as ``seg`` (distillation KL; mean probabilities); a flip mirrors the
    labels (left and right limbs share a label in PASCAL-MT, so nothing is swapped).
    """

    lower_is_better = {"miou": False}
    primary = "miou"
    columns = (Column("miou", "partIoU"),)

    def __init__(self, num_parts: int = 6) -> None:
        if isinstance(num_parts, bool) or not isinstance(num_parts, int) or num_parts < 1:
            raise ConfigError(f"parts: num_parts must be a positive integer, got {num_parts!r}")
        self.num_parts = num_parts

    @property
    def num_labels(self) -> int:
        """Parts plus background."""
        return self.num_parts + 1

    def channels(self, num_classes: int) -> int:
        return self.num_labels

    def accumulator(self, num_classes: int) -> PartsAccumulator:
        return PartsAccumulator(self.num_labels)

    def colour(self, pred: Tensor, num_classes: int, reference: Tensor | None = None) -> np.ndarray:
        """The argmax part, one palette colour per part (background in the first colour)."""
        return colour_labels(pred.detach().argmax(0).cpu().numpy(), self.num_labels)

    def colour_target(self, target: Tensor, num_classes: int) -> np.ndarray:
        """The labels in the prediction's palette, ignored pixels black."""
        return colour_labels(target.detach().long().cpu().numpy(), self.num_labels)
