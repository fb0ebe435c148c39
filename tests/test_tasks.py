"""Task losses: masking, normalisation, empty batches, bookkeeping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densemtl.tasks import (
    TASKS,
    compute_losses,
    depth_loss,
    normal_loss,
    seg_loss,
    task_channels,
)


def test_task_channels() -> None:
    assert task_channels(TASKS, 13) == {"seg": 13, "depth": 1, "normal": 3}
    assert list(task_channels(["normal", "seg"], 7)) == ["normal", "seg"]


def test_seg_loss_ignores_minus_one() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    target[0, 0, :] = -1
    valid = target >= 0
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], target[valid])
    assert torch.allclose(seg_loss(logits, target), expected, atol=1e-6)


def test_depth_loss_only_valid() -> None:
    # valid errors |3-2| and |1.5-1| -> mean 0.75; the invalid pixel (target 0, pred 9) is ignored
    pred = torch.tensor([3.0, 9.0, 1.5]).view(1, 1, 1, 3)
    target = torch.tensor([2.0, 0.0, 1.0]).view(1, 1, 1, 3)
    assert depth_loss(pred, target).item() == pytest.approx(0.75)


def test_normal_loss_cosine() -> None:
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    assert normal_loss(7.5 * target, target).item() == pytest.approx(0.0, abs=1e-6)  # any scale
    assert normal_loss(-0.1 * target, target).item() == pytest.approx(2.0, abs=1e-6)
    side = torch.tensor([4.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert normal_loss(side, target).item() == pytest.approx(1.0, abs=1e-6)
    # an invalid (all-zero) pixel with an opposite prediction does not count
    target[0, :, 0, 0] = 0.0
    pred = target.clone()
    pred[0, :, 0, 0] = torch.tensor([0.0, 0.0, -1.0])
    assert normal_loss(pred, target).item() == pytest.approx(0.0, abs=1e-6)


def test_normal_loss_nan_at_invalid_pixel_keeps_gradient_finite() -> None:
    target = torch.zeros(1, 3, 1, 2)
    target[0, 2, 0, 0] = 1.0
    target[0, :, 0, 1] = float("nan")  # invalid (not finite)
    pred = torch.randn(1, 3, 1, 2, requires_grad=True)
    normal_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize(
    ("loss", "pred", "target"),
    [
        (seg_loss, torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), -1)),
        (depth_loss, torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
        (normal_loss, torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)),
    ],
)
def test_no_valid_pixel_gives_zero(loss, pred, target) -> None:
    pred = pred.clone().requires_grad_(True)
    value = loss(pred, target)
    assert value.item() == 0.0
    value.backward()
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


def test_compute_losses_keys_and_order() -> None:
    g = torch.Generator().manual_seed(1)
    preds = {
        "seg": torch.randn(1, 3, 2, 2, generator=g),
        "depth": torch.rand(1, 1, 2, 2, generator=g),
        "normal": torch.randn(1, 3, 2, 2, generator=g),
    }
    batch = {
        "seg": torch.randint(0, 3, (1, 2, 2), generator=g),
        "depth": torch.rand(1, 1, 2, 2) + 0.1,
        "normal": F.normalize(torch.randn(1, 3, 2, 2, generator=g), dim=1),
        "image": torch.zeros(1, 3, 2, 2),
    }
    out = compute_losses(preds, batch, ("normal", "seg", "depth"))
    assert list(out) == ["normal", "seg", "depth"]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert torch.equal(out["depth"], depth_loss(preds["depth"], batch["depth"]))
