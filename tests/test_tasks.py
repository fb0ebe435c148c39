"""Tasks: the registry, masked losses, normalisation, empty batches, bookkeeping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densemtl import tasks
from densemtl.errors import ConfigError
from densemtl.tasks import compute_losses, default_task_channels, task_channels
from densemtl.tasks.normal import safe_normalize

seg_loss = tasks.create("seg").loss
depth_loss = tasks.create("depth").loss
normal_loss = tasks.create("normal").loss


def test_task_channels() -> None:
    assert (
        task_channels(("seg", "depth", "normal"), 13) == default_task_channels() == {"seg": 13, "depth": 1, "normal": 3}
    )
    assert list(task_channels(["normal", "seg"], 7)) == ["normal", "seg"]


def test_registry_lists_and_refuses() -> None:
    assert {"seg", "depth", "normal"} <= set(tasks.available())
    assert tasks.create("Depth").name == "depth"
    with pytest.raises(ConfigError, match="unknown task 'nope'; valid: .*depth.*normal.*seg"):
        tasks.create("nope")


@pytest.mark.parametrize("name", ["seg", "depth", "normal"])
def test_declarations_are_consistent(name: str) -> None:
    task = tasks.create(name)
    assert task.primary in task.metric_names
    assert {c.metric for c in task.table_columns()} <= set(task.metric_names)
    assert set(task.accumulator(4).compute()) == set(task.metric_names)  # NaNs before any batch


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


def test_normal_loss_bounded_gradient_at_zero_prediction() -> None:
    # Correction (issue 10): F.normalize divides a zero vector by eps = 1e-12, so its gradient was
    # ~1e12; now a zero prediction has loss 1 (cos 0, as before) and the gradient -target / N.
    target = F.normalize(torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    pred = torch.zeros(2, 3, 4, 5, requires_grad=True)
    loss = normal_loss(pred, target)
    assert loss.item() == 1.0
    loss.backward()
    assert torch.allclose(pred.grad, -target / 40)
    peer = torch.randn(2, 3, 4, 5)
    pred.grad = None
    tasks.create("normal").mimicry(pred, peer, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().max() <= 1.0


def test_safe_normalize_is_f_normalize_away_from_zero() -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 3, 4, 5, generator=g)
    pred[0, :, 0, 0] = 0.0
    weight = torch.randn(2, 3, 4, 5, generator=g)
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    old, new = F.normalize(a, dim=1), safe_normalize(b)
    assert torch.equal(old, new)
    (old * weight).sum().backward()
    (new * weight).sum().backward()
    nonzero = torch.ones_like(pred, dtype=torch.bool)
    nonzero[0, :, 0, 0] = False
    assert torch.equal(a.grad[nonzero], b.grad[nonzero])
    assert a.grad[0, :, 0, 0].abs().max() > 1e11  # F.normalize's blow-up
    assert torch.equal(b.grad[0, :, 0, 0], weight[0, :, 0, 0])  # divided by 1 instead


def test_zero_normal_head_at_narrow_width_gives_bounded_gradients() -> None:
    from densemtl import models

    torch.manual_seed(0)
    model = models.create("segnet", {"normal": 3}, width=0.125, depth_stages=3)
    last = [m for m in model.heads["normal"].modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # every head channel off: the prediction is exactly 0
        last.weight.zero_()
        last.bias.zero_()
    x = torch.rand(2, 3, 32, 40)
    target = F.normalize(torch.randn(2, 3, 32, 40), dim=1)
    pred = model(x)["normal"]
    assert torch.equal(pred, torch.zeros_like(pred))
    normal_loss(pred, target).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and g.abs().max() < 100 for g in grads)


def test_flip_and_scale_of_targets() -> None:
    normal = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]).view(3, 1, 2)  # pixel 1 invalid
    flipped = tasks.create("normal").flip(normal)
    assert flipped[:, 0, 0].tolist() == [0.0, 0.0, 0.0] and flipped[:, 0, 1].tolist() == [-1.0, 2.0, 3.0]
    assert not torch.signbit(flipped[:, 0, 0]).any()  # the invalid pixel stays +0.0, not -0.0
    assert torch.equal(normal, torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]).view(3, 1, 2))  # input kept
    depth = torch.tensor([[[2.0, 0.0]]])
    assert torch.equal(tasks.create("depth").scale(depth, 2.0), torch.tensor([[[1.0, 0.0]]]))
    assert tasks.create("depth").scale(depth, 1.0) is depth
    labels = torch.tensor([[0, -1, 2]])
    assert torch.equal(tasks.create("seg").scale(labels, 1.5), labels)
    assert torch.equal(tasks.create("seg").flip(labels), torch.tensor([[2, -1, 0]]))


def test_ensembles_average_each_task_its_way() -> None:
    from densemtl.training.ensemble import Ensemble

    class Fixed(torch.nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.out = {
                "seg": torch.randn(1, 4, 2, 3, generator=g),
                "depth": torch.rand(1, 1, 2, 3, generator=g),
                "normal": torch.randn(1, 3, 2, 3, generator=g),
            }
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.out

    a, b, c = Fixed(0), Fixed(1), Fixed(2)
    pa, pb = a.out, b.out
    two = Ensemble(a, b)(torch.zeros(1))
    assert torch.equal(two["seg"], (0.5 * (pa["seg"].softmax(1) + pb["seg"].softmax(1))).clamp_min(1e-12).log())
    assert torch.equal(two["depth"], 0.5 * (pa["depth"] + pb["depth"]))
    assert torch.equal(two["normal"], F.normalize(pa["normal"], dim=1) + F.normalize(pb["normal"], dim=1))
    three = Ensemble(a, b, c)(torch.zeros(1))
    assert torch.allclose(three["depth"], (pa["depth"] + pb["depth"] + c.out["depth"]) / 3)
    assert torch.allclose(three["seg"].exp().sum(1), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="at least two"):
        Ensemble(a)
