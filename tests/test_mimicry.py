"""MDML's mimicry losses on hand-made outputs."""

from __future__ import annotations

import math

import torch

from densemtl import tasks
from densemtl.training.mimicry import mimicry_losses

seg_mimicry = tasks.create("seg").mimicry
depth_mimicry = tasks.create("depth").mimicry
normal_mimicry = tasks.create("normal").mimicry


def test_seg_kl_with_temperature_by_hand() -> None:
    # One labelled pixel, two classes. a: logits (0, 0) -> p_a = (1/2, 1/2);
    # b: logits (log 3, 0) -> q = (3/4, 1/4). KL(q || p_a) = 3/4 log(3/2) + 1/4 log(1/2).
    a = torch.zeros(1, 2, 1, 2)
    b = torch.zeros(1, 2, 1, 2)
    b[0, 0] = math.log(3.0)
    labels = torch.tensor([[[0, -1]]])  # the second pixel is ignored
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert math.isclose(seg_mimicry(a, b, labels).item(), expected, rel_tol=1e-6)
    # tau = 2: q = softmax((log 3)/2, 0) = (sqrt3, 1)/(sqrt3 + 1); times tau^2 = 4.
    s3 = math.sqrt(3.0)
    q0, q1 = s3 / (s3 + 1), 1 / (s3 + 1)
    expected2 = 4 * (q0 * math.log(q0 / 0.5) + q1 * math.log(q1 / 0.5))
    assert math.isclose(seg_mimicry(a, b, labels, temperature=2.0).item(), expected2, rel_tol=1e-6)
    assert seg_mimicry(b, b, labels).item() < 1e-7


def test_depth_l1_masks_invalid_pixels() -> None:
    a = torch.tensor([1.0, 2.0, 10.0]).view(1, 1, 1, 3)
    b = torch.tensor([1.5, 1.0, 0.0]).view(1, 1, 1, 3)
    target = torch.tensor([3.0, 4.0, 0.0]).view(1, 1, 1, 3)  # third pixel invalid
    assert math.isclose(depth_mimicry(a, b, target).item(), (0.5 + 1.0) / 2)


def test_normal_cosine_masks_invalid_pixels() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    b = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    # pixel 0: same direction (0); pixel 1: orthogonal (1); pixel 2: invalid target, ignored.
    assert math.isclose(normal_mimicry(a, b, target).item(), 0.5, abs_tol=1e-6)


def test_no_gradient_reaches_the_peer() -> None:
    torch.manual_seed(0)
    a = {
        "seg": torch.randn(2, 4, 3, 3, requires_grad=True),
        "depth": torch.randn(2, 1, 3, 3, requires_grad=True),
        "normal": torch.randn(2, 3, 3, 3, requires_grad=True),
    }
    b = {k: torch.randn_like(v, requires_grad=True) for k, v in a.items()}
    batch = {
        "seg": torch.randint(0, 4, (2, 3, 3)),
        "depth": torch.rand(2, 1, 3, 3) + 0.1,
        "normal": torch.nn.functional.normalize(torch.randn(2, 3, 3, 3), dim=1),
    }
    losses = torch.stack(mimicry_losses(a, b, batch, ("seg", "depth", "normal"), temperature=2.0))
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    losses.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in a.values())
    assert all(v.grad is None for v in b.values())
