"""densemtl.testing, the conformance kit: every built-in passes it, and broken objects fail it
with a message naming them and what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import densemtl
from densemtl.balancing.base import GramianWeighting, LossWeighting, Requirements
from densemtl.models.base import MultiTaskModel
from densemtl.tasks.depth import Depth as DepthTask
from densemtl.testing import (
    ConformanceError,
    check_architecture,
    check_dataset,
    check_method,
    check_task,
)


@pytest.mark.parametrize("name", densemtl.methods.available())
def test_every_built_in_method_conforms(name: str) -> None:
    check_method(name)


@pytest.mark.parametrize("name", densemtl.tasks.available())
def test_every_built_in_task_conforms(name: str) -> None:
    check_task(name)


def test_a_built_in_architecture_and_dataset_conform() -> None:
    check_architecture("segnet")  # every architecture: tests/test_models.py, with the same checks
    check_dataset("synthetic")
    check_dataset(densemtl.data.create("synthetic", split="val", n=2, size=(16, 24)))


# -- broken plugin objects --------------------------------------------------------------------------------
class NotTheGramian(GramianWeighting):
    """Declares the Gramian source, but its aggregate is not weights_from_gramian(G) @ J."""

    requirements = Requirements(sources=("gramian", "jacobian"))

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        return torch.ones(len(G), dtype=G.dtype)

    def aggregate(self, J: Tensor) -> Tensor:
        return 2 * J.sum(0)


class WrongWeights(LossWeighting):
    """Reports weights that are not the gradient of its combined loss."""

    def weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        return (2 * losses).sum(), torch.ones_like(losses).detach()


class Forgetful(LossWeighting):
    """Keeps a step count it does not save."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def weights(self, losses: Tensor) -> Tensor:
        self.steps += 1
        return torch.full_like(losses, float(self.steps))


class Shape(GramianWeighting):
    """An update of the wrong length."""

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        return torch.ones(len(G), dtype=G.dtype)

    def aggregate(self, J: Tensor) -> Tensor:
        return J.sum()


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (NotTheGramian, "method 'NotTheGramian': declares the 'gramian' source but its update is not "
         "weights_from_gramian(J Jᵀ) @ J"),
        (WrongWeights, "method 'WrongWeights': combine's gradient in the losses is not the weights it reports"),
        (Forgetful(), "method Forgetful: a copy loaded from its state_dict (weights_only) does not resume exactly"),
        (Shape, "method 'Shape': aggregate of a 1x5 torch.float32 J gave a torch.float32 tensor of shape (), not (5,) "
         "torch.float32"),
    ],
)  # fmt: skip
def test_a_broken_method_fails(method: object, message: str) -> None:
    with pytest.raises(ConformanceError) as got:
        check_method(method)
    assert str(got.value) == message


class Headless(MultiTaskModel):
    """Heads kept as ``self.decoders``: no task owns a parameter."""

    def __init__(self, task_channels: dict[str, int], width: int = 4) -> None:
        super().__init__(task_channels)
        self.trunk = nn.Conv2d(3, width, 3, padding=1)
        self.decoders = nn.ModuleDict({t: nn.Conv2d(width, c, 1) for t, c in task_channels.items()})

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: h(rep) for t, h in self.decoders.items()}


class Leaky(Headless):
    """Heads as ``self.heads``, but decode also runs a shared layer after encode."""

    def __init__(self, task_channels: dict[str, int], width: int = 4) -> None:
        super().__init__(task_channels, width)
        self.heads = self.decoders
        self.mix = nn.Conv2d(width, width, 1)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: h(self.mix(rep)) for t, h in self.heads.items()}


class Small(Leaky):
    """Predictions at half the input size."""

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: h(rep)[..., ::2, ::2] for t, h in self.heads.items()}


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        (Headless, "architecture 'Headless': task 'seg' owns no parameter (name the heads self.heads, or override "
         "task_parameters)"),
        (Leaky, "architecture 'Leaky': a shared parameter acts after encode() (in decode)"),
        (Small, "architecture 'Small': seg: shape (2, 13, 16, 24), not (2, 13, 32, 48)"),
    ],
)  # fmt: skip
def test_a_broken_architecture_fails(arch: type, message: str) -> None:
    with pytest.raises(ConformanceError) as got:
        check_architecture(arch)
    assert str(got.value) == message


class VectorLoss(DepthTask):
    """A loss per pixel instead of a scalar."""

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs().mean(dim=(1, 2, 3))


class NoPrimary(DepthTask):
    primary = "nope"


def test_a_broken_task_fails() -> None:
    target = torch.rand(2, 1, 8, 8) + 0.5
    check_task(DepthTask, target=target)  # the task it breaks passes
    with pytest.raises(ConformanceError, match=r"^task 'VectorLoss': loss\(\) gave tensor\(.*not a scalar tensor$"):
        check_task(VectorLoss, target=target)
    with pytest.raises(ConformanceError, match="^task 'NoPrimary': its 'lower_is_better' gives no direction"):
        check_task(NoPrimary)


class FlatImage(torch.utils.data.Dataset):
    tasks = ("depth",)
    num_classes = 0
    size = (8, 8)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": torch.rand(8, 8), "depth": torch.rand(1, 8, 8)}

    def set_epoch(self, epoch: int) -> None:
        return None


class Unseeded(FlatImage):
    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": torch.rand(3, 8, 8), "depth": torch.rand(1, 8, 8)}


def test_a_broken_dataset_fails() -> None:
    with pytest.raises(ConformanceError, match=r"'image' must be .*got .*\(8, 8\)"):
        check_dataset(FlatImage())
    with pytest.raises(ConformanceError, match=r"^dataset Unseeded: dataset\[0\] twice gives two samples$"):
        check_dataset(Unseeded())
