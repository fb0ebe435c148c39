"""MAO: per-task, per-parameter Adam moments (METHODS.md §4), its optimizer split and resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from densemtl.balancing.mao import MAO
from densemtl.cli.main import main
from densemtl.engine import Engine
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import compute_losses
from densemtl.training.builders import OptimizerGroup, build_optimizer
from densemtl.training.config import TrainConfig

TASKS = ("depth", "normal")


def direct_mao(Js: list[Tensor], betas: tuple[float, float], eps: float, mean: bool = False) -> list[Tensor]:
    """The formulas of METHODS.md §4, written out per task, in float64."""
    T, P = Js[0].shape
    m = [torch.zeros(P, dtype=torch.float64) for _ in range(T)]
    v = [torch.zeros(P, dtype=torch.float64) for _ in range(T)]
    outs = []
    for k, J in enumerate(Js, start=1):
        d = torch.zeros(P, dtype=torch.float64)
        for t in range(T):
            g = J[t].double()
            m[t] = betas[0] * m[t] + (1 - betas[0]) * g
            v[t] = betas[1] * v[t] + (1 - betas[1]) * g * g
            m_hat = m[t] / (1 - betas[0] ** k)
            v_hat = v[t] / (1 - betas[1] ** k)
            d = d + m_hat / (v_hat.sqrt() + eps)
        outs.append(d / T if mean else d)
    return outs


def jacobians(T: int = 3, P: int = 7, n: int = 5) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 100.0, 1e-3])[:T, None]  # tasks of very different gradient sizes
    return [scales * torch.randn(T, P, generator=gen, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3)])
def test_five_steps_match_the_formulas(betas: tuple[float, float], eps: float) -> None:
    mao = MAO(betas=list(betas), eps=eps)  # a list, as YAML and --method-arg give it
    Js = jacobians()
    for got, want in zip([mao(J) for J in Js], direct_mao(Js, betas, eps), strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    assert mao.num_steps == 5


def test_mean_is_sum_over_T() -> None:
    Js = jacobians()
    s, m = MAO(), MAO(reduction="mean")
    for J, want in zip(Js, direct_mao(Js, (0.9, 0.999), 1e-8, mean=True), strict=True):
        a, b = s(J), m(J)
        assert torch.allclose(b, a / 3, rtol=1e-12) and torch.allclose(b, want, rtol=1e-12)


def test_each_task_counts_equally_per_parameter() -> None:
    # First step: m̂/√v̂ = sign(g), so a task 1e5 times larger gets no more say.
    J = torch.tensor([[1e5, -1e5, 2.0], [-1e-3, -1e-3, 3.0]], dtype=torch.float64)
    assert torch.allclose(MAO()(J), torch.tensor([0.0, -2.0, 2.0], dtype=torch.float64), atol=1e-4)


def test_one_task_is_adam() -> None:
    # MAO with T = 1 applied by plain SGD is Adam.
    gen = torch.Generator().manual_seed(1)
    a = nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))
    b = nn.Parameter(a.detach().clone())
    adam, sgd, mao = torch.optim.Adam([a], lr=0.1), torch.optim.SGD([b], lr=0.1), MAO()
    for _ in range(5):
        g = torch.randn(6, generator=gen, dtype=torch.float64)
        a.grad, b.grad = g.clone(), mao(g[None])
        adam.step()
        sgd.step()
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_state_round_trip_and_shape_check() -> None:
    Js = jacobians(n=6)
    mao = MAO(betas=(0.8, 0.99))
    for J in Js[:3]:
        mao(J)
    restored = MAO(betas=(0.8, 0.99))
    restored.load_state_dict(copy.deepcopy(mao.state_dict()))
    for J in Js[3:]:
        assert torch.equal(mao(J), restored(J))
    with pytest.raises(ValueError, match="shape"):
        mao(torch.zeros(3, 8, dtype=torch.float64))


def test_bad_knobs() -> None:
    for kw, word in [({"betas": (0.9,)}, "betas"), ({"betas": (1.0, 0.9)}, "betas"), ({"eps": 0.0}, "eps"),
                     ({"weight_decay": -1.0}, "weight_decay"), ({"reduction": "max"}, "reduction")]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            MAO(**kw)


# --------------------------------------------------------------------------- through the engine
class Tiny(MultiTaskModel):
    def __init__(self) -> None:
        super().__init__({"depth": 1, "normal": 3})
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
        self.heads = nn.ModuleDict({"depth": nn.Conv2d(4, 1, 1), "normal": nn.Conv2d(4, 3, 1)})

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: head(rep) for t, head in self.heads.items()}


def batches(n: int = 5) -> list[dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        normal = torch.randn(2, 3, 5, 6, generator=gen)
        out.append(
            {
                "image": torch.randn(2, 3, 5, 6, generator=gen),
                "depth": torch.rand(2, 1, 5, 6, generator=gen) + 0.5,
                "normal": normal / normal.norm(dim=1, keepdim=True),
            }
        )
    return out


def tiny_setup(**mao_kwargs: float) -> tuple[Tiny, MAO, TrainConfig]:
    torch.manual_seed(0)
    return Tiny(), MAO(**mao_kwargs), TrainConfig(method="mao", lr=0.05, epochs=3, lr_step=2)  # type: ignore[arg-type]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_trainer_steps_match_direct_mao_and_adam_heads(weight_decay: float) -> None:
    model, mao, cfg = tiny_setup(weight_decay=weight_decay)
    ref = copy.deepcopy(model)
    engine = Engine(model, mao, TASKS)
    assert engine.mode == "parameters"
    opt, sched = build_optimizer(cfg, model, mao)
    assert isinstance(opt, OptimizerGroup)
    lr, eps, betas = cfg.lr, 1e-8, (0.9, 0.999)
    shared = ref.shared_parameters()
    head_opts = {t: torch.optim.AdamW(ref.heads[t].parameters(), lr=lr, weight_decay=weight_decay) for t in TASKS}
    m = [[torch.zeros_like(p) for p in shared] for _ in TASKS]
    v = [[torch.zeros_like(p) for p in shared] for _ in TASKS]
    for k, batch in enumerate(batches(), start=1):
        opt.zero_grad(set_to_none=True)
        engine.step(batch)
        opt.step()
        # the reference: per-task gradients by autograd; shared by the formulas, heads by AdamW
        preds = ref(batch["image"])
        losses = compute_losses(preds, batch, TASKS)
        steps = [torch.zeros_like(p) for p in shared]
        for t, task in enumerate(TASKS):
            grads = torch.autograd.grad(losses[task], shared + list(ref.heads[task].parameters()), retain_graph=True)
            for i, g in enumerate(grads[: len(shared)]):
                m[t][i] = betas[0] * m[t][i] + (1 - betas[0]) * g
                v[t][i] = betas[1] * v[t][i] + (1 - betas[1]) * g * g
                steps[i] += (m[t][i] / (1 - betas[0] ** k)) / ((v[t][i] / (1 - betas[1] ** k)).sqrt() + eps)
            for p, g in zip(ref.heads[task].parameters(), grads[len(shared) :], strict=True):
                p.grad = g
            head_opts[task].step()
        with torch.no_grad():
            for p, s in zip(shared, steps, strict=True):
                p.sub_(lr * weight_decay * p + lr * s)  # decoupled decay, then the MAO step
        for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
            # the heads' trajectories are torch's AdamW (Adam when weight_decay = 0) on their own task
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"step {k}: {name}"
    assert isinstance(opt.optimizers["shared"], torch.optim.SGD)
    buffer = engine.strategy.buffer  # type: ignore[attr-defined]
    assert buffer is not None and buffer.matrix.shape[0] == 1  # J streamed row by row
    sched.step()
    assert all(g["lr"] == pytest.approx(lr) for g in opt.param_groups)
    for _ in range(2):
        sched.step()
    assert all(g["lr"] == pytest.approx(lr * cfg.lr_gamma) for g in opt.param_groups)  # step_size = 2


def test_heads_alone_are_adam() -> None:
    # One head's trajectory against torch.optim.Adam on its task's loss alone (the trunk frozen in
    # both, so the head sees the same features).
    model, mao, cfg = tiny_setup()
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    ref = copy.deepcopy(model)
    engine = Engine(model, mao, TASKS)
    opt, _ = build_optimizer(cfg, model, mao)
    adam = torch.optim.Adam(ref.heads["depth"].parameters(), lr=cfg.lr)
    for batch in batches():
        opt.zero_grad(set_to_none=True)
        engine.step(batch)
        opt.step()
        adam.zero_grad()
        compute_losses(ref(batch["image"]), batch, ("depth",))["depth"].backward()
        adam.step()
        for a, b in zip(model.heads["depth"].parameters(), ref.heads["depth"].parameters(), strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_state_round_trip() -> None:
    model, mao, cfg = tiny_setup()
    engine = Engine(model, mao, TASKS)
    opt, sched = build_optimizer(cfg, model, mao)
    data = batches(6)
    for batch in data[:3]:
        opt.zero_grad()
        engine.step(batch)
        opt.step()
    sched.step()
    twin = copy.deepcopy(model)
    twin_mao = MAO()
    twin_mao.load_state_dict(copy.deepcopy(mao.state_dict()))
    twin_opt, twin_sched = build_optimizer(cfg, twin, twin_mao)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    twin_sched.load_state_dict(sched.state_dict())
    twin_engine = Engine(twin, twin_mao, TASKS)
    for batch in data[3:]:
        for e, o in ((engine, opt), (twin_engine, twin_opt)):
            o.zero_grad()
            e.step(batch)
            o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="optimizer state"):
        twin_opt.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())


def test_modes_and_flags_refused() -> None:
    model, mao, cfg = tiny_setup()
    with pytest.raises(ConfigError, match="recompute"):
        Engine(model, mao, TASKS, recompute_every=2)
    with pytest.raises(ConfigError, match="parameters mode"):
        build_optimizer(TrainConfig(method="mao", grad_mode="representation"), model, mao)
    with pytest.raises(ConfigError, match="weight_decay"):
        build_optimizer(TrainConfig(method="mao", weight_decay=0.1), model, mao)


# --------------------------------------------------------------------------- from the CLI
TINY = ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--arch-arg", "width=0.125",
        "--arch-arg", "depth_stages=3", "--quiet", "--method", "mao"]  # fmt: skip


@pytest.mark.usefixtures("no_plots")  # the figures decide nothing here and are most of a tiny run
def test_cli_trains_and_resumes_exactly(tmp_path: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(whole)]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--out", str(split)]) == 0
    assert main(["train", "--out", str(split), "--resume", "--epochs", "2", "--quiet"]) == 0
    lines = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for r in lines[1:] for v in r["train_loss"].values())
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["method"]["step"] == b["method"]["step"] == 4
    assert set(a["optimizer"]["optimizers"]) == {"shared", "tasks"}
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["method"]["exp_avg_sq"], b["method"]["exp_avg_sq"])


@pytest.mark.parametrize(
    "args, expected",
    [(["--grad-mode", "representation"], "parameters mode"), (["--weight-decay", "0.1"], "weight_decay=")],
)
def test_cli_refusals_are_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, *args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densemtl: error:") and "\n" not in err and expected in err, err
    assert not run.exists()
