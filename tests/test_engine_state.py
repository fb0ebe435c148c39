"""The engine's state (resume exactly), ``after_step`` (FAMO's same-batch re-evaluation), the heads
of ExcessMTL, and the registry's methods against their declarations, on a tiny two-task model."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from densemtl.balancing import Requirements, available, create
from densemtl.engine import Engine
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import compute_losses

TASKS = ("seg", "depth")


class Tiny(MultiTaskModel):
    """A conv trunk with batch norm (the representation) and one head per task."""

    def __init__(self) -> None:
        super().__init__({"seg": 4, "depth": 1})
        self.trunk = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Tanh())
        self.heads = nn.ModuleDict({"seg": nn.Conv2d(6, 4, 1), "depth": nn.Conv2d(6, 1, 1)})

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: head(rep) for t, head in self.heads.items()}


def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def batch(seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(2, 3, 6, 7, generator=g),
        "seg": torch.randint(-1, 4, (2, 6, 7), generator=g),
        "depth": torch.rand(2, 1, 6, 7, generator=g) + 0.5,
    }


def losses_of(model: MultiTaskModel, b: dict[str, Tensor]) -> Tensor:
    losses = compute_losses(model(b["image"]), b, TASKS)
    return torch.stack([losses[t] for t in TASKS])


def grads(model: MultiTaskModel) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def train(engine: Engine, optimizer: torch.optim.Optimizer, seeds: range) -> list[Tensor]:
    """The trainer's step on each batch; the weights and ``.grad`` of every step."""
    out: list[Tensor] = []
    for seed in seeds:
        b = batch(seed)
        optimizer.zero_grad(set_to_none=True)
        out.append(engine.step(b).weights)
        out += grads(engine.model)
        optimizer.step()
        engine.after_step(b)
    return out


def saved(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --------------------------------------------------------------------------- state
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("imtl", {"recompute_every": 3}), ("imtl", {"mode": "gramian", "recompute_every": 2}), ("gradnorm", {})],
)
def test_state_dict_resumes_exactly(name: str, kwargs: dict[str, Any]) -> None:
    model = tiny()
    method = create(name, **({"num_tasks": 2} if name == "gradnorm" else {}))
    engine = Engine(model, method, TASKS, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # stateless: the engine's state is the test
    train(engine, optimizer, range(4))  # mid-way through an amortised block
    twin_model, twin_method = copy.deepcopy(model), copy.deepcopy(method)
    twin = Engine(twin_model, twin_method, TASKS, **kwargs)
    twin.load_state_dict(saved(engine.state_dict()))
    twin_optimizer = torch.optim.SGD(twin_model.parameters(), lr=0.05)
    assert twin.step_count == engine.step_count == 4 and twin.norm_layer_name == engine.norm_layer_name
    for a, b in zip(train(engine, optimizer, range(4, 8)), train(twin, twin_optimizer, range(4, 8)), strict=True):
        assert torch.equal(a, b)


def test_old_member_checkpoint_keys_are_read() -> None:
    engine = Engine(tiny(), create("imtl"), TASKS, recompute_every=2)
    c = torch.tensor([0.25, 0.75])
    engine.load_state_dict({"engine_step": 5, "engine_coefficients": c})
    assert engine.step_count == 5 and torch.equal(engine.coefficients, c)  # type: ignore[arg-type]
    state = engine.state_dict()
    assert state["step"] == 5 and torch.equal(state["coefficients"], c)


# --------------------------------------------------------------------------- after_step
def test_famo_same_batch_update_is_the_re_evaluated_batch() -> None:
    model = tiny()
    famo = create("famo", num_tasks=2, w_lr=0.025, gamma=1e-3)
    engine = Engine(model, famo, TASKS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    xi = torch.zeros(2, requires_grad=True)  # the logits, by torch's Adam on the paper's delta
    reference = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3)
    for seed in range(3):
        b = batch(seed)
        optimizer.zero_grad(set_to_none=True)
        result = engine.step(b)
        torch.testing.assert_close(result.weights, famo.weights(result.losses))  # this step's logits
        optimizer.step()
        engine.after_step(b)
        with torch.no_grad():
            after = losses_of(model, b)  # the same batch after the step (train mode, as after_step)
        delta = torch.log(result.losses + 1e-8) - torch.log(after + 1e-8)
        (xi.grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        reference.step()
        torch.testing.assert_close(famo.logits, xi.detach())  # type: ignore[attr-defined]


def test_famo_next_batch_uses_consecutive_batches_and_no_extra_forward() -> None:
    model = tiny()
    famo = create("famo", num_tasks=2, gamma=0.0, update="next_batch")
    engine = Engine(model, famo, TASKS)
    forwards: list[int] = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    first = engine.step(batch(0)).losses
    engine.after_step(batch(0))  # nothing to do: no forward, no logit update
    assert len(forwards) == 1 and torch.equal(famo.logits, torch.zeros(2))  # type: ignore[attr-defined]
    second = engine.step(batch(1)).losses
    z = torch.softmax(torch.zeros(2), 0)
    delta = torch.log(first + 1e-8) - torch.log(second + 1e-8)
    grad = z * (delta - (z * delta).sum())
    torch.testing.assert_close(famo.logits, -0.025 * grad / (grad.abs() + 1e-8), rtol=1e-5, atol=1e-7)  # type: ignore[attr-defined]


def test_after_step_is_free_for_methods_that_do_not_ask() -> None:
    model = tiny()
    engine = Engine(model, create("ew"), TASKS)
    forwards: list[int] = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    engine.step(batch(0))
    engine.after_step(batch(0))
    assert len(forwards) == 1


# --------------------------------------------------------------------------- ExcessMTL
def test_excessmtl_heads_get_their_task_weight() -> None:
    # The whole update is the gradient of Σ_t a_t L_t (the authors' code, LibMTL), heads included.
    model, method = tiny(), create("excessmtl", robust_step_size=0.5)
    engine = Engine(model, method, TASKS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):
        b = batch(seed)
        optimizer.zero_grad(set_to_none=True)
        result = engine.step(b)
        a = method.row_weights()  # type: ignore[attr-defined]
        torch.testing.assert_close(result.weights, a.float())
        got = grads(model)
        model.zero_grad(set_to_none=True)
        (a.float() * losses_of(model, b)).sum().backward()
        for x, y in zip(got, grads(model), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
        if seed:
            assert not torch.allclose(a, torch.ones(2, dtype=a.dtype))
        model.zero_grad(set_to_none=True)
        engine.step(b)
        optimizer.step()


# --------------------------------------------------------------------------- declarations
@pytest.mark.parametrize("name", available())
def test_every_method_runs_in_each_mode_it_declares(name: str) -> None:
    req = create(name).requirements
    for mode in ("loss", "representation", "gramian", "parameters"):
        model = tiny()
        if mode not in req.modes:
            with pytest.raises(ConfigError, match=f"--grad-mode {mode}"):
                Engine(model, create(name), TASKS, mode=mode)
            continue
        knobs = {"num_tasks": 2} if name in ("uw", "gradnorm") else {}
        engine = Engine(model, create(name, **knobs), TASKS, mode=mode)
        result = engine.step(batch(0))
        assert result.weights.shape == (2,) and torch.isfinite(result.weights).all()
        assert all(torch.isfinite(g).all() for g in grads(model))


def test_requirements_refuse_contradictions() -> None:
    for kwargs in (
        {"sources": ()},
        {"sources": ("pixels",)},
        {"sources": ("losses", "jacobian")},  # a loss weighting stands alone
        {"sources": ("representation",), "coordinate_state": True},
        {"sources": ("jacobian",), "layer_grad_norms": "auto"},
        {"sources": ("losses",), "loss_transform": torch.log},
        {"sources": ("rows",), "optimizer": "lbfgs"},
    ):
        with pytest.raises(ValueError, match="Requirements"):
            Requirements(**kwargs)
    mgda_like = Requirements(sources=("representation", "jacobian", "gramian"))
    assert mgda_like.default_mode(True) == "representation" and mgda_like.default_mode(False) == "parameters"
    assert Requirements(sources=("rows", "jacobian")).streams_rows
    assert not Requirements(sources=("jacobian", "rows")).streams_rows
