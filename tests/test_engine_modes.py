"""The ``gramian`` mode and GradNorm's layer norms against autograd references (helpers and
fixtures from ``test_engine``)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from densemtl import models
from densemtl.balancing import create
from densemtl.engine import Engine
from test_engine import (
    FIXED,
    TASKS,
    Fixed,
    assert_grads_close,
    channels,
    engine_grads,
    make_model,
    reference_grads,
    reference_jacobian,
    reference_losses,
    step,
    two_scenes,
)


@pytest.fixture(scope="module")
def batch() -> dict[str, Tensor]:
    return two_scenes()


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("arch", ["segnet", "hps"])
def test_gramian_mode_gramian_is_j_jt(arch: str, log: bool, batch: dict[str, Tensor]) -> None:
    model = make_model(arch)
    method = Fixed(log=log)
    step(Engine(model, method, TASKS, mode="gramian"), batch)
    J = reference_jacobian(model, batch, log=log).double()  # float32 J @ J.T is off by 0.3 % here
    torch.testing.assert_close(method.last_gramian.double(), J @ J.T, rtol=1e-4, atol=1e-6)
    assert_grads_close(engine_grads(model), reference_grads(model, batch, torch.tensor(FIXED), log=log))


def test_gramian_mode_with_a_real_method_matches_parameters_mode(batch: dict[str, Tensor]) -> None:
    grads, weights = [], []
    for mode in ("parameters", "gramian"):
        model = make_model("segnet")
        weights.append(step(Engine(model, create("upgrad"), TASKS, mode=mode), batch).weights)
        grads.append(engine_grads(model))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)
    assert_grads_close(grads[1], grads[0])


def test_parameters_mode_gramian_is_accurate(batch: dict[str, Tensor]) -> None:
    model = make_model("hps")  # 11 M shared parameters
    method = Fixed()
    step(Engine(model, method, TASKS, mode="parameters"), batch)
    J = reference_jacobian(model, batch).double()
    torch.testing.assert_close(method.last_gramian.double(), J @ J.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["segnet", "mtan"])  # shared representation (split path) or not
def test_gradnorm_steps_equal_the_weighted_backward(arch: str, batch: dict[str, Tensor]) -> None:
    torch.manual_seed(0)
    model = make_model("segnet") if arch == "segnet" else models.create("mtan", channels(), width=0.125, depth_stages=3)
    method = create("gradnorm", num_tasks=3)
    engine = Engine(model, method, TASKS)
    seen: list[Tensor] = []
    observe = method.observe_grad_norms
    method.observe_grad_norms = lambda norms: (seen.append(norms.clone()), observe(norms))[-1]  # type: ignore[method-assign]
    for i in range(3):
        w = method.weights(torch.ones(3)).float().clone()  # the weights this step will use
        result = step(engine, batch)
        torch.testing.assert_close(result.weights, w)
        if i:
            assert not torch.allclose(w, torch.ones(3))
        assert_grads_close(engine_grads(model), reference_grads(model, batch, w))
        W = dict(model.named_parameters())[engine.norm_layer_name]
        losses = reference_losses(model, batch)
        expected = torch.stack([torch.autograd.grad(losses[t], W, retain_graph=True)[0].norm() for t in range(3)])
        torch.testing.assert_close(seen[-1], expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["upgrad", "pcgrad", "mao"])
def test_row_by_row_protocol_equals_aggregate(name: str) -> None:
    # The default protocol gathers the rows into J; MAO folds each row in as it comes.
    J = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    whole, rows = create(name), create(name)
    for _ in range(2):  # MAO's second call also checks its moments carry over
        rows.start_rows(3, J[0])
        for t in range(3):
            rows.add_row(t, J[t].clone())
        torch.testing.assert_close(rows.finish_rows(), whole(J))
