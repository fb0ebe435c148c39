"""The gradient engine against independent references: J by autograd per task, backward of Σ c_t L_t.

Tiny seeded models (a narrow SegNet and an HPS ResNet-18 with 8-channel heads) on two synthetic
32×40 scenes; every reference is computed by a fresh forward pass and ``torch.autograd``. Each
forward pass is preceded by the same ``torch.manual_seed`` so that HPS's dropout draws the same
mask in the engine and in the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from densemtl import data, models
from densemtl.balancing import Aggregator, GramianWeighting, LossWeighting, Requirements, create
from densemtl.engine import Engine, NonFiniteGradientError, StepResult
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import compute_losses, task_channels

TASKS = ("seg", "depth", "normal")
FIXED = (2.0, 1.0, 0.5)
FORWARD_SEED = 1234


# --------------------------------------------------------------------------- fixtures
def channels() -> dict[str, int]:
    return task_channels(TASKS, int(data.create("synthetic", "train", n=1, size=(32, 40)).num_classes))


def make_model(arch: str) -> MultiTaskModel:
    torch.manual_seed(0)
    if arch == "segnet":
        return models.create("segnet", channels(), width=0.125, depth_stages=3)
    if arch == "hps":
        return models.create("hps", channels(), backbone="resnet18", head_channels=8)
    return models.create("single", channels(), base_args={"width": 0.125, "depth_stages": 3})


def two_scenes() -> dict[str, Tensor]:
    ds = data.create("synthetic", "train", n=2, size=(32, 40))
    samples = [ds[i] for i in range(2)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


@pytest.fixture(scope="module")
def batch() -> dict[str, Tensor]:
    return two_scenes()


class Recorder(Aggregator):
    """Keeps a copy of every J it is given; returns the mean row (EW / T)."""

    def __init__(self, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.seen: list[Tensor] = []
        self.requirements = Requirements(sources=("jacobian", "representation"), loss_transform=transform)

    def aggregate(self, J: Tensor) -> Tensor:
        self.seen.append(J.clone())
        return J.mean(dim=0)


class Fixed(GramianWeighting):
    """Weights ``values`` times the call number (so reused weights can be told apart); counts calls."""

    def __init__(self, values: tuple[float, ...] = FIXED, grow: bool = False, log: bool = False) -> None:
        super().__init__()
        self.values, self.grow = values, grow
        self.calls = 0
        transform = torch.log if log else None
        self.requirements = Requirements(sources=("representation", "jacobian", "gramian"), loss_transform=transform)

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        self.calls += 1
        self.last_gramian = G.clone()
        return torch.tensor(self.values, dtype=G.dtype) * (self.calls if self.grow else 1)


class NaNAfter(Aggregator):
    """Returns the mean row for ``good`` calls, then NaN."""

    requirements = Requirements(sources=("representation", "jacobian"))

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def aggregate(self, J: Tensor) -> Tensor:
        self.good -= 1
        return J.mean(dim=0) if self.good >= 0 else torch.full_like(J[0], float("nan"))


class NaNGramianAfter(GramianWeighting):
    """Equal weights for ``good`` calls, then NaN."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    def weights_from_gramian(self, G: Tensor) -> Tensor:
        self.good -= 1
        return torch.ones(len(G), dtype=G.dtype) if self.good >= 0 else torch.full((len(G),), float("nan"))


class NaNWeights(LossWeighting):
    def weights(self, losses: Tensor) -> Tensor:
        return torch.full_like(losses, float("nan"))


# --------------------------------------------------------------------------- references
def step(engine: Engine, batch: dict[str, Tensor]) -> StepResult:
    torch.manual_seed(FORWARD_SEED)
    return engine.step(batch)


def reference_losses(model: MultiTaskModel, batch: dict[str, Tensor]) -> Tensor:
    torch.manual_seed(FORWARD_SEED)
    losses = compute_losses(model(batch["image"]), batch, TASKS)
    return torch.stack([losses[t] for t in TASKS])


def flat(grads: tuple[Tensor | None, ...], params: list[torch.nn.Parameter]) -> Tensor:
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
    )


def reference_jacobian(model: MultiTaskModel, batch: dict[str, Tensor], log: bool = False) -> Tensor:
    shared = model.shared_parameters()
    losses = reference_losses(model, batch)
    if log:
        losses = torch.log(losses)
    rows = [torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True) for t in range(3)]
    return torch.stack([flat(r, shared) for r in rows])


def reference_grads(model: MultiTaskModel, batch: dict[str, Tensor], c: Tensor, log: bool = False) -> list[Tensor]:
    """``.grad`` of every parameter after backward(Σ c_t L_t) (of log L_t with ``log``)."""
    model.zero_grad(set_to_none=True)
    losses = reference_losses(model, batch)
    if log:
        losses = torch.log(losses)
    (c.to(losses) * losses).sum().backward()
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def engine_grads(model: MultiTaskModel) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def assert_grads_close(got: list[Tensor], expected: list[Tensor]) -> None:
    # The engine sums the same float32 terms in another order than one backward: agreement to
    # 1e-4 relative, or to 1e-5 of the tensor's largest entry for its small entries.
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=max(1e-6, 1e-5 * float(b.abs().max())))


def shared_flat_grad(model: MultiTaskModel) -> Tensor:
    return flat(tuple(p.grad for p in model.shared_parameters()), model.shared_parameters())


# --------------------------------------------------------------------------- parameters mode
@pytest.mark.parametrize("arch", ["segnet", "hps"])
def test_parameters_mode_jacobian_and_mean_update(arch: str, batch: dict[str, Tensor]) -> None:
    model = make_model(arch)
    method = Recorder()
    engine = Engine(model, method, TASKS, mode="parameters")
    result = step(engine, batch)
    J = reference_jacobian(model, batch)
    assert len(method.seen) == 1 and method.seen[0].shape == J.shape
    torch.testing.assert_close(method.seen[0], J, rtol=1e-4, atol=1e-6)
    # The mean row is the gradient of the mean loss (EW / T) ...
    torch.testing.assert_close(shared_flat_grad(model), J.mean(0), rtol=1e-4, atol=1e-6)
    # ... while each head gets its own task's full gradient (a non-Gramian aggregator has no weights).
    for t, task in enumerate(TASKS):
        own = model.task_parameters(task)
        losses = reference_losses(model, batch)
        expected = torch.autograd.grad(losses[t], own)
        for p, g in zip(own, expected, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert torch.equal(result.weights, torch.ones(3))
    assert result.losses.shape == (3,) and not result.losses.requires_grad


@pytest.mark.parametrize("mode", ["parameters", "representation", "gramian"])
@pytest.mark.parametrize("arch", ["segnet", "hps"])
def test_gramian_weighting_equals_weighted_backward(arch: str, mode: str, batch: dict[str, Tensor]) -> None:
    model = make_model(arch)
    engine = Engine(model, Fixed(), TASKS, mode=mode)
    result = step(engine, batch)
    got = engine_grads(model)
    torch.testing.assert_close(result.weights, torch.tensor(FIXED))
    assert_grads_close(got, reference_grads(model, batch, torch.tensor(FIXED)))


def test_representation_mode_mgda_weights_on_the_simplex(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    engine = Engine(model, create("mgda"), TASKS)
    assert engine.mode == "representation"
    result = step(engine, batch)
    w = result.weights
    assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    assert_grads_close(engine_grads(model), reference_grads(model, batch, w))


def test_representation_mode_jacobian_is_the_representation_gradient(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    method = Recorder()
    step(Engine(model, method, TASKS, mode="representation"), batch)
    torch.manual_seed(FORWARD_SEED)
    rep = model.encode(batch["image"])
    preds = model.decode(rep, (32, 40))
    losses = compute_losses(preds, batch, TASKS)
    J = torch.stack([torch.autograd.grad(losses[t], rep, retain_graph=True)[0].reshape(-1) for t in TASKS])
    torch.testing.assert_close(method.seen[0], J, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- amortised weights
@pytest.mark.parametrize("mode", ["parameters", "representation", "gramian"])
def test_recompute_every_reuses_the_last_weights(mode: str, batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    method = Fixed(grow=True)
    engine = Engine(model, method, TASKS, mode=mode, recompute_every=3)
    calls = []
    for i in range(7):
        result = step(engine, batch)
        calls.append(method.calls)
        c = torch.tensor(FIXED) * method.calls
        torch.testing.assert_close(result.weights, c)
        assert_grads_close(engine_grads(model), reference_grads(model, batch, c))
        assert engine.step_count == i + 1
    assert calls == [1, 1, 1, 2, 2, 2, 3]


# --------------------------------------------------------------------------- loss_transform
def test_loss_transform_is_used_for_the_jacobian(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    method = Recorder(transform=torch.log)
    step(Engine(model, method, TASKS, mode="parameters"), batch)
    torch.testing.assert_close(method.seen[0], reference_jacobian(model, batch, log=True), rtol=1e-4, atol=1e-6)


def test_loss_transform_is_used_by_amortised_steps(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    engine = Engine(model, Fixed(log=True), TASKS, mode="parameters", recompute_every=2)
    for _ in range(2):  # a computed step, then a reused one
        step(engine, batch)
        assert_grads_close(engine_grads(model), reference_grads(model, batch, torch.tensor(FIXED), log=True))


def test_dbmtl_first_step_in_the_engine(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    step(Engine(model, create("dbmtl"), TASKS), batch)
    J = 0.1 * reference_jacobian(model, batch, log=True)  # (1 - β) g: the average starts at zero
    norms = J.norm(dim=1)
    expected = (norms.max() / norms) @ J
    torch.testing.assert_close(shared_flat_grad(model), expected, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- no shared parameters
def test_single_model_gets_each_tasks_own_gradient(batch: dict[str, Tensor]) -> None:
    model = make_model("single")
    assert model.shared_parameters() == []
    engine = Engine(model, create("pcgrad"), TASKS)
    assert engine.mode == "parameters"
    result = step(engine, batch)
    assert torch.equal(result.weights, torch.ones(3))
    assert_grads_close(engine_grads(model), reference_grads(model, batch, torch.ones(3)))


# --------------------------------------------------------------------------- loss mode and GradNorm's hook
def test_loss_mode_is_the_weighted_backward(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    engine = Engine(model, create("ew"), TASKS)
    assert engine.mode == "loss"
    step(engine, batch)
    assert_grads_close(engine_grads(model), reference_grads(model, batch, torch.ones(3)))


def test_gradnorm_observes_the_norms_of_the_last_shared_weight(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    method = create("gradnorm", num_tasks=3)
    seen: list[Tensor] = []
    observe = method.observe_grad_norms
    method.observe_grad_norms = lambda norms: (seen.append(norms.clone()), observe(norms))[-1]  # type: ignore[method-assign]
    engine = Engine(model, method, TASKS)
    assert engine.norm_layer_name is None  # found in the first step's graph
    # The last shared convolution to run, by forward hooks (registration order would give the
    # decoder stage that runs first).
    shared = {id(p) for p in model.shared_parameters()}
    ran: list[torch.nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: ran.append(m))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and id(m.weight) in shared
    ]
    result = step(engine, batch)
    for h in hooks:
        h.remove()
    W = ran[-1].weight
    name = next(n for n, p in model.named_parameters() if p is W)
    assert engine.norm_layer_name == name
    assert name != [n for n, p in model.named_shared_parameters() if p.dim() >= 2][-1]
    losses = reference_losses(model, batch)
    expected = torch.stack([torch.autograd.grad(losses[t], W, retain_graph=True)[0].norm() for t in range(3)])
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-7)
    # This step's update uses the weights from before the GradNorm step (all 1 at the start) ...
    torch.testing.assert_close(result.weights, torch.ones(3))
    assert_grads_close(engine_grads(model), reference_grads(model, batch, torch.ones(3)))
    # ... which has now moved them, keeping their sum at T.
    w = method.weights(losses.detach())
    assert not torch.allclose(w, torch.ones(3)) and torch.isclose(w.sum(), torch.tensor(3.0))


def test_gradnorm_layer_knob(batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    first = next(n for n, p in model.named_shared_parameters() if p.dim() >= 2)
    assert Engine(model, create("gradnorm", layer=first), TASKS).norm_layer_name == first
    with pytest.raises(ConfigError, match="not a shared parameter"):
        Engine(model, create("gradnorm", layer="heads.seg.0.weight"), TASKS)


# --------------------------------------------------------------------------- refusals
def test_refusals() -> None:
    segnet = make_model("segnet")
    with pytest.raises(ConfigError, match="no single shared representation"):
        Engine(make_model("single"), create("pcgrad"), TASKS, mode="representation")
    with pytest.raises(ConfigError, match="needs per-task gradients"):
        Engine(segnet, create("mgda"), TASKS, mode="loss")
    with pytest.raises(ConfigError, match="loss weighting"):
        Engine(segnet, create("ew"), TASKS, mode="parameters")
    with pytest.raises(ConfigError, match="cannot be reused"):
        Engine(segnet, create("graddrop"), TASKS, recompute_every=2)
    with pytest.raises(ConfigError, match="parameters mode only"):
        Engine(segnet, create("dbmtl"), TASKS, mode="representation")
    for name in ("mao", "moco", "excessmtl"):  # state per coordinate of J, like DB-MTL
        with pytest.raises(ConfigError, match="parameters mode only"):
            Engine(segnet, create(name), TASKS, mode="representation")
    with pytest.raises(ConfigError, match="gramian: GradDrop needs the per-task gradients"):
        Engine(segnet, create("graddrop"), TASKS, mode="gramian")
    with pytest.raises(ConfigError, match="not a mode"):
        Engine(segnet, create("mgda"), TASKS, mode="gradients")
    with pytest.raises(ConfigError, match=">= 1"):
        Engine(segnet, create("mgda"), TASKS, recompute_every=0)


@pytest.mark.parametrize("mode", ["parameters", "representation", "gramian", "loss"])
def test_non_finite_update_is_refused_and_nothing_changes(mode: str, batch: dict[str, Tensor]) -> None:
    model = make_model("segnet")
    method: Aggregator | LossWeighting = (
        NaNWeights() if mode == "loss" else NaNGramianAfter(good=1) if mode == "gramian" else NaNAfter(good=1)
    )
    engine = Engine(model, method, TASKS, mode=mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    done = 0
    if mode != "loss":
        step(engine, batch)
        optimizer.step()
        done = 1
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    with pytest.raises(NonFiniteGradientError, match=rf"{type(method).__name__}.*step {done}\b"):
        step(engine, batch)
    assert all(p.grad is None for p in model.parameters())
    optimizer.step()  # what a loop that ignored the error would do: nothing, there are no gradients
    params = dict(model.named_parameters())
    for k, v in before.items():
        if k in params:
            assert torch.equal(params[k], v), k
    assert engine.step_count == done
