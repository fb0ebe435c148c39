"""The Python API on one's own model: ``densemtl.backward`` / ``Balancer`` against the engine and
against closed forms and torchjd, every method callable on a Jacobian (or refusing), the engine's
errors for foreign models and tasks, ``load_run``, ``metrics.evaluate``'s refusals, the lazy
top-level names, and every python block of docs/python.md executed."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import densemtl
from densemtl import methods
from densemtl.api import Balancer
from densemtl.engine import Engine
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.training.checkpoint import export_safetensors, load_checkpoint

TASKS = ("a", "b", "c")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "python.md"


class Tiny(MultiTaskModel):
    """A trunk and three linear heads; the engine's twin of the plain module the API gets."""

    def __init__(self, tasks: tuple[str, ...] = TASKS) -> None:
        super().__init__(dict.fromkeys(tasks, 1))
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(5, 1) for t in tasks})

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: h(rep) for t, h in self.heads.items()}

    def task_losses(self, preds, batch, tasks=None):  # type: ignore[no-untyped-def]
        # positive losses of different scales, so that the log-based methods are defined
        return {t: (i + 1.0) * F.mse_loss(preds[t], batch[t]) for i, t in enumerate(tasks or self.tasks)}


def make_batch(seed: int, tasks: tuple[str, ...] = TASKS) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, generator=g)
    return {"image": x, **{t: torch.randn(6, 1, generator=g) + i for i, t in enumerate(tasks)}}


def plain_losses(model: Tiny, batch: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The user's own forward pass on the same module: features and T losses."""
    features = model.trunk(batch["image"])
    preds = {t: h(features) for t, h in model.heads.items()}
    losses = model.task_losses(preds, batch)
    return features, [losses[t] for t in model.tasks]


def grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


# --------------------------------------------------------------------------- every method vs the engine
@pytest.mark.parametrize("features", [False, True], ids=["no-features", "features"])
@pytest.mark.parametrize("name", methods.available())
def test_backward_equals_engine(name: str, features: bool) -> None:
    """Two steps (so that state carries) of backward on a plain forward pass give the engine's
    ``.grad`` on the same module, for every registered method; heads included."""
    torch.manual_seed(0)
    ours, theirs = Tiny(), Tiny()
    theirs.load_state_dict(ours.state_dict())
    m_ours, m_theirs = methods.create(name), methods.create(name)
    req = m_ours.requirements
    if features:
        mode = "representation" if "representation" in req.modes else req.default_mode(True)
    else:
        mode = req.default_mode(False)
    engine = Engine(theirs, m_theirs, TASKS, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MAO's "use SGD"
        balancer = Balancer(m_ours, ours.trunk.parameters())
    for step in range(2):
        batch = make_batch(step)
        rep, losses = plain_losses(ours, batch)
        if req.reevaluate:
            result = balancer.backward(losses, features=rep if features else None)
            assert balancer.mode == mode
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = densemtl.backward(losses, ours.trunk.parameters(), m_ours, features=rep if features else None)
        expected = engine.step(batch)
        for g, h in zip(grads(ours), grads(theirs), strict=True):
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(result.weights.float(), expected.weights.float(), rtol=1e-4, atol=1e-6)
        # made after the step: UW's log-variances exist from the first step on
        torch.optim.SGD([*ours.parameters(), *m_ours.parameters()], lr=0.05).step()
        torch.optim.SGD([*theirs.parameters(), *m_theirs.parameters()], lr=0.05).step()
        if req.reevaluate:
            with torch.no_grad():
                balancer.after_step(plain_losses(ours, batch)[1])
            engine.after_step(batch)


# --------------------------------------------------------------------------- closed forms and torchjd
def two_task_setup() -> tuple[nn.Module, nn.ModuleList, Tensor, list[Tensor]]:
    torch.manual_seed(1)
    trunk = nn.Linear(4, 3)
    heads = nn.ModuleList([nn.Linear(3, 1), nn.Linear(3, 1)])
    x = torch.randn(8, 4)
    features = trunk(x)
    losses = [heads[0](features).pow(2).mean(), (heads[1](features) - 1).pow(2).mean()]
    return trunk, heads, features, losses


def jacobian(losses: list[Tensor], params: list[nn.Parameter]) -> Tensor:
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, params, retain_graph=True)]) for l in losses]
    return torch.stack(rows)


def trunk_grad(trunk: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in trunk.parameters()])


def test_ew_is_the_sum_of_gradients() -> None:
    trunk, heads, _, losses = two_task_setup()
    expected = torch.autograd.grad(sum(losses), [*trunk.parameters(), *heads.parameters()], retain_graph=True)
    densemtl.backward(losses, trunk.parameters(), "ew")
    got = [p.grad for p in [*trunk.parameters(), *heads.parameters()]]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_mgda_two_tasks_closed_form() -> None:
    trunk, _, _, losses = two_task_setup()
    J = jacobian(losses, list(trunk.parameters()))
    g1, g2 = J
    alpha = ((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1)
    densemtl.backward(losses, trunk.parameters(), "mgda", mode="parameters")
    torch.testing.assert_close(trunk_grad(trunk), alpha * g1 + (1 - alpha) * g2, rtol=1e-4, atol=1e-6)


def test_upgrad_matches_torchjd_and_takes_a_torchjd_aggregator() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    trunk, _, _, losses = two_task_setup()
    J = jacobian(losses, list(trunk.parameters()))
    densemtl.backward(losses, trunk.parameters(), "upgrad", mode="parameters")
    ours = trunk_grad(trunk).clone()
    torch.testing.assert_close(ours, aggregation.UPGrad()(J), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(methods.create("upgrad")(J), aggregation.UPGrad()(J), rtol=1e-4, atol=1e-6)
    trunk, _, _, losses = two_task_setup()  # the same again: a graph is backpropagated once
    densemtl.backward(losses, trunk.parameters(), aggregation.UPGrad())  # any function of J
    torch.testing.assert_close(trunk_grad(trunk), ours, rtol=1e-4, atol=1e-6)


def test_representation_mode_is_the_rep_jacobian_aggregated() -> None:
    trunk, heads, features, losses = two_task_setup()
    R = torch.stack([torch.autograd.grad(l, features, retain_graph=True)[0].reshape(-1) for l in losses])
    direction = methods.create("upgrad")(R).view_as(features)
    (expected,) = torch.autograd.grad(features, [trunk.weight], grad_outputs=direction, retain_graph=True)
    densemtl.backward(losses, trunk.parameters(), methods.create("upgrad"), features=features)
    torch.testing.assert_close(trunk.weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert heads[0].weight.grad is not None and heads[1].weight.grad is not None


def test_named_method_keeps_state_and_task_params_given() -> None:
    trunk, heads, _, _ = two_task_setup()
    seen = []
    for _ in range(2):
        features = trunk(torch.randn(8, 4))
        losses = [heads[0](features).pow(2).mean(), heads[1](features).pow(2).mean()]
        seen.append(densemtl.backward(losses, trunk.parameters(), "rlw").weights)
    assert not torch.equal(seen[0], seen[1])  # one generator across calls, not a fresh seed-0 one each
    features = trunk(torch.randn(8, 4))
    losses = [heads[0](features).pow(2).mean(), heads[1](features).pow(2).mean()]
    heads.zero_grad(set_to_none=True)
    densemtl.backward(losses, trunk.parameters(), "upgrad", task_params=[heads[0].parameters(), []])
    assert heads[0].weight.grad is not None and heads[1].weight.grad is None  # not named: left alone


# --------------------------------------------------------------------------- refusals
def test_backward_refusals() -> None:
    trunk, heads, features, losses = two_task_setup()
    params = trunk.parameters
    with pytest.raises(ConfigError, match="Balancer.*after_step"):
        densemtl.backward(losses, params(), "famo")
    with pytest.raises(ConfigError, match="uw learns parameters of its own"):
        other = two_task_setup()  # refused after its backward: a graph of its own
        densemtl.backward(other[3], other[0].parameters(), "uw")
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        densemtl.backward(losses, params(), "nope")
    with pytest.raises(ConfigError, match="needs features="):
        densemtl.backward(losses, params(), "upgrad", mode="representation")
    with pytest.raises(ConfigError, match="parameters mode only"):
        densemtl.backward(losses, params(), "dbmtl", mode="representation")
    with pytest.raises(ConfigError, match="not a mode"):
        densemtl.backward(losses, params(), "upgrad", mode="fast")
    with pytest.raises(ConfigError, match=r"losses\[1\] is of shape \(8, 1\)"):
        densemtl.backward([losses[0], heads[1](features)], params(), "ew")
    with pytest.raises(ConfigError, match="features must be"):
        densemtl.backward(losses, params(), "mgda", features=features.detach())
    with pytest.raises(ConfigError, match="task_params has 1 entries for 2 losses"):
        densemtl.backward(losses, params(), "upgrad", task_params=[heads[0].parameters()])
    with pytest.raises(ConfigError, match=r"used by tasks 0 and 1 but is not in shared_params"):
        densemtl.backward(losses, [trunk.bias], "upgrad")
    skip = trunk(torch.randn(8, 4))
    mixed = [heads[0](skip).mean() + trunk.weight.sum(), heads[1](skip).mean()]
    with pytest.raises(ConfigError, match="without passing through features"):
        densemtl.backward(mixed, trunk.named_parameters(), "upgrad", features=skip)
    trunk, _, _, losses = two_task_setup()
    famo = Balancer("famo", trunk.parameters())
    famo.backward(losses)
    with pytest.raises(ConfigError, match="after_step"):
        famo.backward(losses)
    with pytest.warns(UserWarning, match="plain SGD"):
        Balancer("mao", params())


def test_engine_refuses_plain_modules_unknown_tasks_and_bad_batches() -> None:
    with pytest.raises(ConfigError, match=r"Engine needs a densemtl MultiTaskModel, got Linear.*densemtl.backward"):
        Engine(nn.Linear(2, 2), methods.create("ew"), TASKS)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'seg' are not tasks of Tiny \(its tasks: a, b, c\)"):
        Engine(Tiny(), methods.create("ew"), ("a", "seg"))
    engine = Engine(Tiny(), methods.create("ew"), ("a", "b"))
    batch = make_batch(0)
    del batch["b"]
    with pytest.raises(ConfigError, match="the batch has no 'b'"):
        engine.step(batch)


# --------------------------------------------------------------------------- methods on a Jacobian
@pytest.mark.parametrize("name", methods.available())
def test_every_method_is_callable_on_a_jacobian_or_refuses(name: str) -> None:
    J = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    method = methods.create(name)
    if method.requirements.uses_losses and method.requirements.weights_from_losses:
        with pytest.raises(ConfigError, match="needs the task losses.*densemtl.backward"):
            method(J)
        return
    out = method(J)
    assert out.shape == (7,) and torch.isfinite(out).all()
    if name == "ew":
        torch.testing.assert_close(out, J.sum(dim=0))


# --------------------------------------------------------------------------- load_run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import densemtl.training.trainer as trainer_module

    out = tmp_path_factory.mktemp("api") / "run"
    cfg = densemtl.TrainConfig(
        epochs=1, n_train=4, n_val=2, batch_size=2, size=(16, 16), arch_args={"width": 0.125, "depth_stages": 3}
    )
    with pytest.MonkeyPatch.context() as mp:
        for name in ("plot_run", "plot_diagnostics", "save_panel"):
            mp.setattr(trainer_module, name, lambda *a, **k: None)
        densemtl.Trainer(cfg, out, progress=False, log=lambda s: None).run()
    return out


def test_load_run(tiny_run: Path) -> None:
    run = densemtl.load_run(tiny_run)
    assert run.tasks == ("seg", "depth", "normal") and run.size == (16, 16) and run.epoch == 1
    assert not run.model.training and next(run.model.parameters()).device.type == "cpu"
    assert run.path == tiny_run / "checkpoints" / "last.pt" and run.config.epochs == 1
    with torch.no_grad():
        out = run.model(torch.rand(1, 3, 16, 16))
    assert out["seg"].shape == (1, run.num_classes, 16, 16)
    same = densemtl.from_checkpoint(tiny_run / "checkpoints" / "best.pt", device="cpu")
    for a, b in zip(run.model.state_dict().values(), same.model.state_dict().values(), strict=True):
        assert a.shape == b.shape
    exported = export_safetensors(load_checkpoint(tiny_run), tiny_run.parent / "run.safetensors")
    again = densemtl.load_run(exported)
    assert again.tasks == run.tasks and again.size == run.size and again.path == exported
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_load_run_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        densemtl.load_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="without checkpoints/last.pt"):
        densemtl.load_run(tmp_path)
    (tmp_path / "x.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a checkpoint"):
        densemtl.load_run(tmp_path / "x.pt")


# --------------------------------------------------------------------------- metrics.evaluate
def test_evaluate_refuses_lists_and_misspelt_keys() -> None:
    from densemtl.metrics import evaluate

    pred = {"depth": torch.rand(1, 1, 4, 4) + 0.1}
    target = {"depth": torch.rand(1, 1, 4, 4) + 0.1}
    with pytest.raises(ConfigError, match="one batch's dicts.*StreamingMetrics"):
        evaluate([pred, pred], [target, target], 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no target 'depth'.*did you mean 'dept'"):
        evaluate(pred, {"dept": target["depth"]}, 0)
    with pytest.raises(ConfigError, match=r"no target for prediction key\(s\) \['depth'\]; target keys: image"):
        evaluate(pred, {"image": torch.zeros(1, 3, 4, 4)}, 0)
    assert set(evaluate(pred, target, 0)) == {"depth"}


# --------------------------------------------------------------------------- the package surface
def test_import_is_light_and_names_are_exported() -> None:
    code = "import sys, densemtl; print('torch' in sys.modules, 'typing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    for name in ("backward", "Balancer", "load_run", "from_checkpoint", "Trainer", "TrainConfig", "methods"):
        assert getattr(densemtl, name) is not None and name in dir(densemtl)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        densemtl.nope  # noqa: B018


def test_docs_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import densemtl.training.trainer as trainer_module

    for name in ("plot_run", "plot_diagnostics", "save_panel"):
        monkeypatch.setattr(trainer_module, name, lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 4
    namespace: dict[str, object] = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOCS.name}[{i}]", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "runs" / "python-doc" / "checkpoints" / "last.pt").is_file()
