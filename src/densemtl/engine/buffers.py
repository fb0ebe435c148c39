"""A preallocated (T, P) Jacobian buffer with per-parameter views, reused every step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class JacobianBuffer:
    """Rows are tasks; row t's slice for parameter k is a view shaped like that parameter.

    Allocated once per (T, parameters, dtype, device): a backward pass fills row t in place
    (:meth:`bind_row`) and the update is written into one persistent vector whose views become
    the parameters' ``.grad`` (:meth:`set_grads`).
    """

    def __init__(self, params: Sequence[nn.Parameter], num_tasks: int) -> None:
        self.params = list(params)
        first = self.params[0]
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self.matrix = torch.zeros(num_tasks, self.numel, dtype=first.dtype, device=first.device)
        self.update = torch.zeros(self.numel, dtype=first.dtype, device=first.device)

    def bind_row(self, t: int) -> None:
        """Zero row t and make each parameter's ``.grad`` a view of it, so that a backward pass
        accumulates the parameter gradients into the row in place."""
        row = self.matrix[t]
        row.zero_()
        for p, v in zip(self.params, self.views(row), strict=True):
            p.grad = v

    def views(self, flat: Tensor) -> list[Tensor]:
        return [v.view_as(p) for v, p in zip(flat.split(self.sizes), self.params, strict=True)]

    def set_grads(self, flat: Tensor) -> None:
        """Make each parameter's ``.grad`` a view of the persistent update buffer holding ``flat``."""
        if flat.data_ptr() != self.update.data_ptr():
            self.update.copy_(flat)
        for p, v in zip(self.params, self.views(self.update), strict=True):
            p.grad = v
