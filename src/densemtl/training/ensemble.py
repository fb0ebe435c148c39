"""Averaging the predictions of several multi-task networks (MDML's ensemble)."""

from __future__ import annotations

from torch import Tensor, nn


class Ensemble(nn.Module):
    """Averages two multi-task networks' predictions: class probabilities (returned as log-probs,
    so argmax and softmax behave), depth, and normalised normals."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        pa, pb = self.a(x), self.b(x)
        out: dict[str, Tensor] = {}
        for t in pa:
            if t == "seg":
                prob = 0.5 * (pa[t].softmax(1) + pb[t].softmax(1))
                out[t] = prob.clamp_min(1e-12).log()
            elif t == "normal":
                out[t] = nn.functional.normalize(pa[t], dim=1) + nn.functional.normalize(pb[t], dim=1)
            else:
                out[t] = 0.5 * (pa[t] + pb[t])
        return out
