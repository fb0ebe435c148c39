"""DB-MTL and GradNorm: hand-worked steps, the invariances they promise, state round trips."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from torch import Tensor

from densemtl.balancing import BalancingMethod, create
from densemtl.balancing.dbmtl import DBMTL
from densemtl.balancing.gradnorm import GradNorm
from densemtl.errors import ConfigError


def t64(*rows: Any) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def round_trip(method: BalancingMethod, fresh: BalancingMethod) -> BalancingMethod:
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


# --------------------------------------------------------------------------- DB-MTL
def test_dbmtl_balances_the_log_losses() -> None:
    transform = create("dbmtl", eps=1e-3).requirements.loss_transform
    assert transform is not None
    losses = torch.tensor([1.0, math.e, 0.5])
    torch.testing.assert_close(transform(losses), torch.log(losses + 1e-3))


def test_dbmtl_first_two_steps_hand_worked() -> None:
    method = DBMTL()  # beta 0.9, beta_sigma 0: the average starts at zero, no bias correction
    J1 = t64([3.0, 4.0, 0.0], [0.0, 0.0, 1.0])
    # ĝ = 0.1 J1, norms (0.5, 0.1): task 2 is scaled up 5x to the largest norm.
    torch.testing.assert_close(method(J1), t64(0.3, 0.4, 0.5))
    J2 = t64([0.0, 0.0, 0.0], [0.0, 2.0, 0.0])
    g1, g2 = t64(0.27, 0.36, 0.0), t64(0.0, 0.2, 0.09)  # 0.9 ĝ + 0.1 J2
    expected = g1 + (0.45 / g2.norm()) * g2
    torch.testing.assert_close(method(J2), expected)
    assert method.step == 2


def test_dbmtl_beta_decays_with_beta_sigma() -> None:
    method = DBMTL(beta=0.5, beta_sigma=1.0)  # β_k = 0.5 / k
    J = t64([1.0, 0.0])
    method(J)  # ĝ = 0.5 J
    method(2 * J)  # β_2 = 0.25: ĝ = 0.25 * 0.5 + 0.75 * 2 = 1.625
    torch.testing.assert_close(method.grad_ema, t64([1.625, 0.0]))


def test_dbmtl_balancing_is_invariant_to_rescaling_a_task() -> None:
    gen = torch.Generator().manual_seed(0)
    seq = [torch.randn(3, 20, generator=gen, dtype=torch.float64) for _ in range(4)]
    scales = t64(1.0, 100.0, 0.01).unsqueeze(1)
    a, b = DBMTL(), DBMTL()
    for J in seq:
        out, scaled = a(J), b(scales * J)
        # Every term Σ_t (max ‖ĝ‖ / ‖ĝ_t‖) ĝ_t has the largest norm: rescaling a task changes
        # only that common norm, so the update is the same direction, scaled by the max ratio.
        ratio = b.grad_ema.norm(dim=1).max() / a.grad_ema.norm(dim=1).max()
        torch.testing.assert_close(scaled, ratio * out)
        norms = a.grad_ema.norm(dim=1)
        terms = (norms.max() / norms).unsqueeze(1) * a.grad_ema
        torch.testing.assert_close(terms.norm(dim=1), norms.max().expand(3))


def test_dbmtl_does_not_alias_the_engines_buffer() -> None:
    method = DBMTL()
    J = t64([1.0, 2.0], [3.0, 4.0])
    method(J)
    saved = method.grad_ema.clone()
    J.zero_()  # the engine rewrites its Jacobian buffer in place every step
    assert torch.equal(method.grad_ema, saved)


def test_dbmtl_zero_row_and_restart_on_new_shape() -> None:
    method = DBMTL()
    out = method(t64([0.0, 0.0], [0.0, 2.0]))
    torch.testing.assert_close(out, t64(0.0, 0.2))
    method(torch.ones(2, 5, dtype=torch.float64))
    assert method.step == 1 and method.grad_ema.shape == (2, 5)


def test_dbmtl_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    seq = [torch.randn(3, 6, generator=gen) for _ in range(6)]
    a = DBMTL(beta_sigma=0.5)
    for J in seq[:3]:
        a(J)
    b = round_trip(a, DBMTL(beta_sigma=0.5))
    assert isinstance(b, DBMTL)
    for J in seq[3:]:
        assert torch.equal(a(J), b(J))


def test_dbmtl_rejects_bad_knobs() -> None:
    with pytest.raises(ValueError, match="beta"):
        DBMTL(beta=1.0)
    with pytest.raises(ConfigError, match="beta"):
        create("dbmtl", beta="high")


# --------------------------------------------------------------------------- GradNorm
def test_gradnorm_asks_for_the_norms_of_its_layer_knob() -> None:
    method = create("gradnorm", num_tasks=3)
    assert method.requirements.layer_grad_norms == "auto"
    assert create("gradnorm", layer="trunk.0.weight").requirements.layer_grad_norms == "trunk.0.weight"
    assert method.parameters() == []
    torch.testing.assert_close(method.weights(torch.ones(3)), torch.ones(3))


def test_gradnorm_first_step_hand_worked() -> None:
    method = GradNorm(num_tasks=2)  # alpha 1.5, lr 0.025, Adam
    method.observe_grad_norms(torch.tensor([10.0, 1.0]))
    losses = torch.tensor([1.0, 1.0], requires_grad=True)
    scalar, w = method.combine(losses)
    # This step's update uses w = (1, 1); then G = (10, 1), target = mean(G) r^α = 5.5 (r = 1),
    # ∂L_grad/∂w = sign(G - 5.5) ‖∇_W L‖ = (10, -1). Adam's first step is lr times the sign:
    # w = (0.975, 1.025), which already sums to 2.
    torch.testing.assert_close(w, torch.ones(2))
    scalar.backward()
    torch.testing.assert_close(losses.grad, torch.ones(2))
    torch.testing.assert_close(method.weights(torch.ones(2)), torch.tensor([0.975, 1.025]))
    # The second step with the same norms: Adam's bias-corrected ratio is still ±1.
    method.observe_grad_norms(torch.tensor([10.0, 1.0]))
    method.combine(torch.tensor([1.0, 1.0]))
    # G = (9.75, 1.025), target 5.3875: signs unchanged, w = (0.95, 1.05).
    torch.testing.assert_close(method.weights(torch.ones(2)), torch.tensor([0.95, 1.05]))


def test_gradnorm_training_rates_use_the_first_losses() -> None:
    method = GradNorm(num_tasks=2)
    for losses in ([1.0, 1.0], [0.5, 1.0]):
        method.observe_grad_norms(torch.tensor([1.0, 1.0]))
        method.combine(torch.tensor(losses))
        if losses == [1.0, 1.0]:  # equal norms and rates: nothing to correct
            torch.testing.assert_close(method.weights(torch.ones(2)), torch.ones(2))
    # Task 1 halved its loss (r_1 = 2/3 < 1): it trains too fast and loses weight.
    w = method.weights(torch.ones(2))
    assert w[0] < 1.0 < w[1]
    torch.testing.assert_close(method.initial_losses, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_gradnorm_weights_stay_positive_and_sum_to_t() -> None:
    gen = torch.Generator().manual_seed(0)
    method = GradNorm(num_tasks=4, lr=0.5)  # large steps: weights pushed to the floor
    for _ in range(50):
        method.observe_grad_norms(10 * torch.rand(4, generator=gen))
        _, w = method.combine(0.1 + torch.rand(4, generator=gen))
        assert (w > 0).all() and torch.isclose(w.sum(), torch.tensor(4.0))
    w = method.weights(torch.ones(4))
    assert (w > 0).all() and torch.isclose(w.sum(), torch.tensor(4.0))


def test_gradnorm_lowers_the_weight_of_a_task_with_a_ten_times_larger_gradient() -> None:
    # A toy problem: one shared weight W, two quadratic tasks, the first scaled by 10.
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(4, 4, generator=gen, requires_grad=True)
    a, b = torch.randn(2, 4, generator=gen), torch.randn(2, 4, generator=gen)
    method = GradNorm(num_tasks=2)
    for _ in range(20):
        losses = torch.stack([10 * ((W @ a[0] - b[0]) ** 2).sum(), ((W @ a[1] - b[1]) ** 2).sum()])
        norms = torch.stack([torch.autograd.grad(loss, W, retain_graph=True)[0].norm() for loss in losses])
        method.observe_grad_norms(norms)
        scalar, _ = method.combine(losses)
        (grad,) = torch.autograd.grad(scalar, W)
        with torch.no_grad():
            W -= 1e-3 * grad
    w = method.weights(torch.ones(2))
    assert w[0] < 1.0 < w[1]
    assert torch.isclose(w.sum(), torch.tensor(2.0))


def test_gradnorm_without_norms_keeps_its_weights() -> None:
    method = GradNorm(num_tasks=3)
    for _ in range(3):
        _, w = method.combine(torch.tensor([1.0, 2.0, 3.0]))
        torch.testing.assert_close(w, torch.ones(3))


def test_gradnorm_state_round_trip() -> None:
    gen = torch.Generator().manual_seed(2)
    seq = [(5 * torch.rand(3, generator=gen), 0.1 + torch.rand(3, generator=gen)) for _ in range(8)]

    def run(method: GradNorm, part: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        out = []
        for norms, losses in part:
            method.observe_grad_norms(norms)
            out.append(method.combine(losses)[1])
        return out

    a = GradNorm(num_tasks=3)
    run(a, seq[:4])
    b = round_trip(a, GradNorm(num_tasks=3))
    assert isinstance(b, GradNorm)
    for x, y in zip(run(a, seq[4:]), run(b, seq[4:]), strict=True):
        assert torch.equal(x, y)


def test_gradnorm_checks_its_inputs_and_knobs() -> None:
    method = GradNorm(num_tasks=3)
    with pytest.raises(ValueError, match="3 tasks"):
        method.observe_grad_norms(torch.ones(2))
    with pytest.raises(ValueError, match="3 tasks"):
        method.combine(torch.ones(2))
    with pytest.raises(ConfigError, match="alpha"):
        create("gradnorm", alpha="strong")
    with pytest.raises(ConfigError, match="lr"):
        GradNorm(lr=0.0)
    with pytest.raises(ConfigError, match="layer"):
        GradNorm(layer=3)  # type: ignore[arg-type]
