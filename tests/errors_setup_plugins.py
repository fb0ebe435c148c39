"""``SETUP`` and ``ENV`` of the rows of docs/errors.md on a plugin's registrations and outputs
(merged into tests/test_errors_table.py's): each writes the plugin module its row imports. A
module that registers a name unregisters it once used, so that no row leaves a name behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

REGMOD = "from densemtl import models\nfrom densemtl.models.segnet import segnet\n\nmodels.register('a,b')(segnet)\n"
NOCALLMOD = "from densemtl import data\n\ndata.register('x')(42)\n"
OUTMOD = """from densemtl import models
from densemtl.models.segnet import segnet


@models.register("outarch")
def outarch(task_channels: dict) -> object:
    m = segnet(task_channels, 0.125, 3)
    m.forward = forward
    return m


def forward(x: object) -> object:
    if models.MODELS.find("outarch"):  # built for good by now (once on the meta device, once for real)
        models.MODELS.unregister("outarch")
    return x
"""
WEIGHTMOD = """import torch
from densemtl import methods
from densemtl.balancing.base import LossWeighting, Requirements


@methods.register("weightmethod")
class WeightMethod(LossWeighting):
    requirements = Requirements(sources=("losses",))

    def __init__(self) -> None:
        super().__init__()
        methods.METHODS.unregister("weightmethod")

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(losses) + 1)
"""


def _write(name: str, text: str) -> Callable[[dict[str, Path]], None]:
    def setup(paths: dict[str, Path]) -> None:
        (paths["TMP"] / name).write_text(text)

    return setup


PLUGIN_SETUP: dict[str, Callable[[dict[str, Path]], None]] = {
    "plugin-register-name": _write("regmod.py", REGMOD),
    "plugin-register-not-callable": _write("nocallmod.py", NOCALLMOD),
    "plugin-interrupt": _write("intmod.py", "raise KeyboardInterrupt\n"),
    "plugin-exit-0": _write("zeromod.py", "import sys\n\nsys.exit(0)\n"),
    "plugin-forward-tensor": _write("outmod.py", OUTMOD),
    "plugin-method-weights": _write("weightmod.py", WEIGHTMOD),
}
PLUGIN_ENV: dict[str, dict[str, str]] = {"speed-dist-timeout": {"DENSEMTL_DIST_TIMEOUT_MIN": "-5"}}
