"""Equal weighting (EW): the baseline every balancing method is measured against."""

from __future__ import annotations

import torch
from torch import Tensor

from densemtl.balancing import register
from densemtl.balancing.base import LossWeighting, Requirements


@register("ew")
class EqualWeighting(LossWeighting):
    """L = sum_t L_t: every task weight is 1 (the "equal weighting" of the MTL literature)."""

    requirements = Requirements(sources=("losses",), weighted_sum=True, weights_from_losses=False)

    def weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)
