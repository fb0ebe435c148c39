"""Loss weightings: shared properties over every registered one, then hand-worked values per method.

The property suite enumerates the registry: a loss weighting (``requirements.uses_losses``) joins
it by being registered, with the knobs it declares for tiny tests (``register(name, tiny=...)``).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import Tensor

import densemtl.balancing as balancing
from densemtl.balancing.base import LossWeighting
from densemtl.errors import ConfigError
from densemtl.testing import check_method
from densemtl.testing.methods import loss_weighting_steps


def takes_num_tasks(name: str) -> bool:
    return "num_tasks" in inspect.signature(balancing.METHODS.get(name)).parameters


def make(name: str) -> LossWeighting:
    """``name`` with its tiny knobs and ``num_tasks=3`` where its factory takes one."""
    size = {"num_tasks": 3} if takes_num_tasks(name) else {}
    method = balancing.create(name, **balancing.METHODS.tiny(name), **size)
    assert isinstance(method, LossWeighting)
    return method


NAMES = [n for n in balancing.available() if balancing.create(n).requirements.uses_losses]


def _losses(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def _loss_sequence(steps: int, num_tasks: int = 3, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.2 + torch.rand(num_tasks, generator=g) for _ in range(steps)]


#: steps as the trainer takes them (hooks, combine and backward, SGD on the method's parameters)
run = loss_weighting_steps


# --------------------------------------------------------------------------- common properties
@pytest.mark.parametrize("name", NAMES)
def test_conforms(name: str) -> None:
    """densemtl.testing's checks: ``combine`` gives a scalar whose gradient in the losses is the
    finite positive weights it reports (twice: stateful methods move from the second call on), and
    a copy loaded from its ``state_dict`` (``weights_only``) resumes exactly."""
    check_method(name)


@pytest.mark.parametrize("name", [n for n in NAMES if takes_num_tasks(n)])
def test_wrong_number_of_tasks_is_refused(name: str) -> None:
    method = make(name)
    with pytest.raises(ValueError, match="3 tasks"):
        method.combine(_losses(1.0, 2.0))


# --------------------------------------------------------------------------- UW
def test_uw_value_and_gradient_at_zero() -> None:
    # s = 0: L = 2 + 0.5 + 0 = 2.5;  dL/ds_t = 1 - exp(-s_t) L_t = [1 - 2, 1 - 0.5] = [-1, 0.5]
    uw = balancing.create("uw", num_tasks=2)
    scalar, w = uw.combine(_losses(2.0, 0.5))
    torch.testing.assert_close(scalar, torch.tensor(2.5))
    torch.testing.assert_close(w, torch.ones(2))
    scalar.backward()
    (s,) = uw.parameters()
    torch.testing.assert_close(s.grad, torch.tensor([-1.0, 0.5]))


def test_uw_value_and_gradient_at_log_two() -> None:
    # s = log 2: exp(-s) = 1/2; L = 1 + 0.25 + 2 log 2; dL/ds = 1 - L_t / 2 = [0, 0.75]; dL/dL_t = 1/2
    uw = balancing.create("uw", num_tasks=2)
    uw.load_state_dict({"log_vars": torch.full((2,), math.log(2.0))})
    losses = _losses(2.0, 0.5)
    scalar, w = uw.combine(losses)
    torch.testing.assert_close(scalar, torch.tensor(1.25 + 2 * math.log(2.0)))
    torch.testing.assert_close(w, torch.full((2,), 0.5))
    scalar.backward()
    (s,) = uw.parameters()
    torch.testing.assert_close(s.grad, torch.tensor([0.0, 0.75]))
    torch.testing.assert_close(losses.grad, torch.full((2,), 0.5))


def test_uw_parameters_exist_at_construction_only_with_num_tasks() -> None:
    assert balancing.create("uw").parameters() == []
    (s,) = balancing.create("uw", num_tasks=3).parameters()
    assert s.shape == (3,) and s.requires_grad
    lazy = balancing.create("uw")
    lazy.combine(_losses(1.0, 2.0))
    assert lazy.parameters()[0].shape == (2,)
    assert balancing.create("uw").parameters_lr() is None  # the run's learning rate
    assert balancing.create("uw", lr=0.01).parameters_lr() == 0.01


def test_uw_load_keeps_the_parameter_object() -> None:
    # The trainer's optimizer holds the parameter: loading must write into it, not replace it.
    uw = balancing.create("uw", num_tasks=2)
    (before,) = uw.parameters()
    uw.load_state_dict({"log_vars": torch.tensor([0.3, -0.2])})
    (after,) = uw.parameters()
    assert after is before
    torch.testing.assert_close(after.detach(), torch.tensor([0.3, -0.2]))


# --------------------------------------------------------------------------- DWA
def test_dwa_weights_are_one_for_the_first_two_epochs() -> None:
    dwa = balancing.create("dwa")
    losses = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(dwa.weights(losses), torch.ones(3))
    dwa.end_epoch(0, torch.tensor([1.0, 2.0, 4.0]))
    torch.testing.assert_close(dwa.weights(losses), torch.ones(3))


def test_dwa_hand_worked_weights() -> None:
    # r = [0.5/1, 2/2, 2/4] = [0.5, 1, 0.5]; r / 2 = [0.25, 0.5, 0.25]
    # w = 3 * exp(r/2) / (2 e^0.25 + e^0.5) = [0.913513, 1.172974, 0.913513]
    dwa = balancing.create("dwa", temperature=2.0)
    dwa.end_epoch(0, torch.tensor([1.0, 2.0, 4.0]))
    dwa.end_epoch(1, torch.tensor([0.5, 2.0, 2.0]))
    w = dwa.weights(torch.tensor([9.0, 9.0, 9.0]))  # the current batch does not matter
    denom = 2 * math.exp(0.25) + math.exp(0.5)
    expected = torch.tensor([3 * math.exp(0.25), 3 * math.exp(0.5), 3 * math.exp(0.25)]) / denom
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w, torch.tensor([0.913513, 1.172974, 0.913513]), atol=1e-6, rtol=0)
    assert w.sum().item() == pytest.approx(3.0)
    # a third epoch: only the last two count. r = [0.25/0.5, 2/2, 2/2] -> task 0 is weighted down
    dwa.end_epoch(2, torch.tensor([0.25, 2.0, 2.0]))
    w = dwa.weights(torch.ones(3))
    denom = math.exp(0.25) + 2 * math.exp(0.5)
    torch.testing.assert_close(w, 3 * torch.tensor([math.exp(0.25), math.exp(0.5), math.exp(0.5)]) / denom)


def test_dwa_rejects_a_bad_temperature() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        balancing.create("dwa", temperature=0.0)


# --------------------------------------------------------------------------- RLW
@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_weights_positive_sum_to_t_and_change(distribution: str) -> None:
    rlw = balancing.create("rlw", distribution=distribution)
    draws = [rlw.weights(torch.ones(4)) for _ in range(5)]
    for w in draws:
        assert (w > 0).all()
        assert w.sum().item() == pytest.approx(4.0, abs=1e-5)
    assert not torch.equal(draws[0], draws[1])


def test_rlw_is_reproducible_from_a_seeded_generator() -> None:
    a, b, c = (balancing.create("rlw") for _ in range(3))
    a.set_generator(torch.Generator().manual_seed(7))
    b.set_generator(torch.Generator().manual_seed(7))
    c.set_generator(torch.Generator().manual_seed(8))
    wa = [a.weights(torch.ones(3)) for _ in range(3)]
    wb = [b.weights(torch.ones(3)) for _ in range(3)]
    wc = [c.weights(torch.ones(3)) for _ in range(3)]
    for x, y in zip(wa, wb, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(wa[0], wc[0])
    # pinned: T softmax(z), z the generator's first normal draw
    z = torch.randn(3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(wa[0], 3 * torch.softmax(z, 0))


def test_rlw_does_not_save_a_generator_it_was_given() -> None:
    rlw = balancing.create("rlw")
    rlw.set_generator(torch.Generator().manual_seed(1))
    rlw.weights(torch.ones(2))
    assert "generator" not in rlw.state_dict()


def test_rlw_rejects_an_unknown_distribution() -> None:
    with pytest.raises(ConfigError, match="distribution"):
        balancing.create("rlw", distribution="cauchy")


# --------------------------------------------------------------------------- GLS
def test_gls_is_the_geometric_mean_with_weights_l_over_t_lt() -> None:
    # (1 * 4 * 16)^(1/3) = 4;  dL/dL_t = 4 / (3 L_t) = [4/3, 1/3, 1/12]
    gls = balancing.create("gls")
    losses = _losses(1.0, 4.0, 16.0)
    scalar, w = gls.combine(losses)
    torch.testing.assert_close(scalar, torch.tensor(4.0))
    torch.testing.assert_close(w, torch.tensor([4 / 3, 1 / 3, 1 / 12]))
    scalar.backward()
    torch.testing.assert_close(losses.grad, w)


def test_gls_is_scale_invariant_in_direction() -> None:
    # Scaling one loss scales the objective but not the relative gradient of the shared features.
    gls = balancing.create("gls")
    _, w = gls.combine(_losses(0.5, 2.0))
    _, w_scaled = gls.combine(_losses(0.5, 200.0))
    torch.testing.assert_close(w * torch.tensor([0.5, 2.0]), w_scaled * torch.tensor([0.5, 200.0]) / 10)


# --------------------------------------------------------------------------- FAMO
def test_famo_first_call_hand_worked() -> None:
    # z = [1/2, 1/2]; 1/c = 0.5/1 + 0.5/3 = 2/3; scalar = c * 0.5 * (log 1 + log 3) = 0.75 log 3;
    # effective weights c z_t / L_t = [3/4, 1/4], summing to 1
    famo = balancing.create("famo", eps=0.0)
    losses = _losses(1.0, 3.0)
    scalar, w = famo.combine(losses)
    torch.testing.assert_close(scalar, torch.tensor(0.75 * math.log(3.0)))
    torch.testing.assert_close(w, torch.tensor([0.75, 0.25]))
    scalar.backward()
    torch.testing.assert_close(losses.grad, w)


@pytest.mark.parametrize("update", ["same_batch", "next_batch"])
def test_famo_first_logit_step_hand_worked(update: str) -> None:
    # delta = log before - log after = [1, 0]; J_softmax^T delta = z (delta - <z, delta>) = [1/4, -1/4];
    # Adam's first step is -w_lr * sign: xi = [-0.025, 0.025] (the slower task gains weight).
    # "after" is the same batch re-evaluated after the step, or the next call's losses.
    famo = balancing.create("famo", eps=0.0, gamma=0.0, update=update)
    famo.combine(_losses(1.0, 1.0))
    after = torch.tensor([math.exp(-1.0), 1.0])
    famo.observe_losses_after_step(after)  # ignored by "next_batch"
    famo.combine(after.clone().requires_grad_(True))
    torch.testing.assert_close(famo.logits, torch.tensor([-0.025, 0.025]))  # type: ignore[attr-defined]


@pytest.mark.parametrize("update", ["same_batch", "next_batch"])
def test_famo_logit_updates_match_torch_adam(update: str) -> None:
    seq = _loss_sequence(8, num_tasks=3, seed=3)
    famo = balancing.create("famo", w_lr=0.025, gamma=1e-3, update=update)
    xi = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3)
    before = None
    for losses in seq:
        if before is not None:  # after the step: 0.9 × the same batch's losses, or this call's
            after = 0.9 * before if update == "same_batch" else losses
            famo.observe_losses_after_step(after)  # ignored by "next_batch"
            delta = torch.log(before + 1e-8) - torch.log(after + 1e-8)
            (xi.grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
            opt.step()
        famo.combine(losses.clone().requires_grad_(True))
        before = losses
        torch.testing.assert_close(famo.logits, xi.detach())  # type: ignore[attr-defined]


def test_famo_moves_weight_to_the_task_whose_loss_falls_slowest() -> None:
    famo = balancing.create("famo")
    for k in range(10):
        _, w = famo.combine(_losses(0.8**k, 0.99**k, 1.0))
        famo.observe_losses_after_step(torch.tensor([0.8, 0.99, 1.0]) ** (k + 1))
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    z = famo.task_weights  # type: ignore[attr-defined]
    assert z.sum().item() == pytest.approx(1.0)
    assert z[2] > z[1] > z[0]


def test_famo_min_losses_shift_the_log() -> None:
    famo = balancing.create("famo", min_losses=[0.5, 1.0], eps=0.0)
    # gaps L - m = [1, 3]: the same as the first hand-worked case
    _, w = famo.combine(_losses(1.5, 4.0))
    torch.testing.assert_close(w, torch.tensor([0.75, 0.25]))
    with pytest.raises(ConfigError, match="update"):
        balancing.create("famo", update="every_epoch")


# --------------------------------------------------------------------------- STCH
def test_stch_warmup_is_sum_of_log_losses() -> None:
    stch = balancing.create("stch")
    scalar, w = stch.combine(_losses(1.0, 2.0, 4.0))
    torch.testing.assert_close(scalar, torch.tensor(3 * math.log(2.0)))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25]))


def test_stch_linear_warmup_equals_ew() -> None:
    stch = balancing.create("stch", log_losses=False)
    ew = balancing.create("ew")
    for epoch in range(5):  # epochs 0..4 are the warm-up with warmup_epoch=4
        losses = _losses(0.3, 1.7, 2.2)
        s1, w1 = stch.combine(losses)
        s2, w2 = ew.combine(losses)
        torch.testing.assert_close(s1, s2)
        torch.testing.assert_close(w1, w2)
        stch.end_epoch(epoch, losses.detach())
    assert not stch.in_warmup  # type: ignore[attr-defined]


def test_stch_reference_is_the_mean_of_epoch_warmup_epoch() -> None:
    stch = balancing.create("stch", warmup_epoch=2)
    for epoch in range(3):
        assert stch.in_warmup  # type: ignore[attr-defined]
        stch.end_epoch(epoch, torch.tensor([1.0 + epoch, 2.0, 3.0]))
    torch.testing.assert_close(stch.reference, torch.tensor([3.0, 2.0, 3.0]))  # type: ignore[attr-defined]
    stch.end_epoch(3, torch.tensor([9.0, 9.0, 9.0]))
    torch.testing.assert_close(stch.reference, torch.tensor([3.0, 2.0, 3.0]))  # type: ignore[attr-defined]


def _after_warmup(reference: list[float], **kwargs: float | bool) -> balancing.BalancingMethod:
    stch = balancing.create("stch", warmup_epoch=0, **kwargs)
    stch.end_epoch(0, torch.tensor(reference))
    return stch


def test_stch_hand_worked_after_warmup() -> None:
    # r = 1, L = [1, 2, 4], mu = 1: x = log L; scalar = 3 log(1 + 2 + 4) = 3 log 7;
    # weights 3 softmax(x)_t / L_t = 3 (L_t / 7) / L_t = 3/7 for every task
    stch = _after_warmup([1.0, 1.0, 1.0])
    assert isinstance(stch, LossWeighting)
    losses = _losses(1.0, 2.0, 4.0)
    scalar, w = stch.combine(losses)
    torch.testing.assert_close(scalar, torch.tensor(3 * math.log(7.0)))
    torch.testing.assert_close(w, torch.full((3,), 3 / 7))
    scalar.backward()
    torch.testing.assert_close(losses.grad, w)


def test_stch_approaches_max_weighting_as_mu_goes_to_zero() -> None:
    # log mode: x = log L = [0, log 2, log 4] -> all weight T / L_t on task 2; value -> T max x
    stch = _after_warmup([1.0, 1.0, 1.0], mu=1e-3)
    assert isinstance(stch, LossWeighting)
    scalar, w = stch.combine(_losses(1.0, 2.0, 4.0))
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0, 0.75]), atol=1e-5, rtol=0)
    torch.testing.assert_close(scalar, torch.tensor(3 * math.log(4.0)), atol=1e-3, rtol=0)
    # linear mode: x = L / r - 1 = [0.5, 0.25, 0.2] -> weight T / r_0 = 3 on task 0; value -> 1.5
    lin = _after_warmup([1.0, 2.0, 1.0], mu=1e-3, log_losses=False)
    assert isinstance(lin, LossWeighting)
    scalar, w = lin.combine(_losses(1.5, 2.5, 1.2))
    torch.testing.assert_close(w, torch.tensor([3.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(scalar, torch.tensor(1.5), atol=1e-3, rtol=0)
    # a large mu weighs the normalised tasks nearly equally: 3 softmax -> 1 each
    flat = _after_warmup([1.0, 2.0, 1.0], mu=1e4, log_losses=False)
    assert isinstance(flat, LossWeighting)
    _, w = flat.combine(_losses(1.5, 2.5, 1.2))
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 1.0]), atol=1e-3, rtol=0)


def test_stch_rejects_bad_knobs() -> None:
    with pytest.raises(ConfigError, match="mu"):
        balancing.create("stch", mu=0.0)
    with pytest.raises(ConfigError, match="warmup_epoch"):
        balancing.create("stch", warmup_epoch=-1)
