"""Mixed precision: bf16 trains on the CPU; fp16's loss scale never reaches a method (every mode gives
the unscaled step); an fp16 overflow skips the step before any method state sees it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import ddp_workers as W
from densemtl.cli.main import main
from densemtl.engine import Engine
from densemtl.engine.precision import Precision
from densemtl.errors import ConfigError
from densemtl.training.builders import build_method

pytestmark = pytest.mark.usefixtures("no_plots")

CASES = [
    ("ew", None),
    ("uw", None),
    ("gradnorm", None),
    ("pcgrad", "representation"),
    ("pcgrad", "parameters"),
    ("nashmtl", "gramian"),
    ("cagrad", "representation"),
    ("mao", "parameters"),
    ("acg", "parameters"),
]


def scaled(init_scale: float) -> Precision:
    """fp16's scaling without fp16's autocast (which needs CUDA here): a CPU GradScaler."""
    p = Precision("off")
    p.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return p


def one_step(
    method: str, mode: str | None, precision: Precision | None, overflow: bool = False
) -> tuple[dict, torch.Tensor, dict]:
    """One SGD step; with ``overflow`` the first shared kernel's gradients come out inf, as fp16's do
    when the scale is too high (fp16 autocast itself needs CUDA)."""
    torch.manual_seed(0)
    model = W.Small(bn=True)
    if overflow:
        model.trunk[0].weight.register_hook(lambda g: g * math.inf)
    balancer = build_method(method, len(W.TASKS), 0, {})
    engine = Engine(model, balancer, W.TASKS, mode=mode, precision=precision)
    opt = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.05)
    result = engine.step(W.global_batch())
    if precision is not None:
        precision.step(opt)
        precision.update()
    else:
        opt.step()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in balancer.state_dict().items()}
    return {k: v.detach().clone() for k, v in model.named_parameters()}, result.weights, state


@pytest.mark.parametrize(("method", "mode"), CASES)
def test_the_loss_scale_is_divided_out(method: str, mode: str | None) -> None:
    plain, w_plain, _ = one_step(method, mode, None)
    fp16, w_scaled, _ = one_step(method, mode, scaled(2.0**12))
    torch.testing.assert_close(w_scaled, w_plain, rtol=1e-4, atol=1e-6)
    for k, v in plain.items():
        torch.testing.assert_close(fp16[k], v, rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{method}/{mode} {k}: {m}")


@pytest.mark.parametrize(("method", "mode"), [("pcgrad", "parameters"), ("mao", "parameters"), ("nashmtl", "gramian")])
def test_an_overflow_skips_the_step_before_the_method(method: str, mode: str | None) -> None:
    torch.manual_seed(0)
    before = {k: v.detach().clone() for k, v in W.Small(bn=True).named_parameters()}
    precision = scaled(2.0**16)
    params, _, state = one_step(method, mode, precision, overflow=True)
    for k, v in before.items():
        assert torch.equal(params[k], v), k  # the scaler skipped the step
    assert precision.scale == 2.0**15  # and halved the scale
    fresh = build_method(method, len(W.TASKS), 0, {}).state_dict()
    for k, v in state.items():  # the method saw nothing
        if isinstance(v, torch.Tensor) and isinstance(fresh.get(k), torch.Tensor):
            assert torch.equal(v, fresh[k]), k
        else:
            assert v == fresh.get(k), k


def test_bf16_trains_on_the_cpu_close_to_fp32(tmp_path: Path, tiny_args: list[str]) -> None:
    runs = {}
    for amp in ("off", "bf16"):
        out = tmp_path / amp
        assert main(["train", *tiny_args, "--epochs", "2", "--amp", amp, "--out", str(out)]) == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(v) for r in records[1:] for v in r["train_loss"].values())
        runs[amp] = json.loads((out / "summary.json").read_text())["metrics"]
    depth = runs["off"]["depth"]["abs_err"]
    assert abs(runs["bf16"]["depth"]["abs_err"] - depth) < 0.1 * depth
    assert abs(runs["bf16"]["normal"]["mean"] - runs["off"]["normal"]["mean"]) < 3.0


def test_fp16_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: fp16 runs")
    with pytest.raises(ConfigError, match="--amp fp16 needs a CUDA device"):
        Precision("fp16", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA")
def test_fp16_trains_on_cuda(tmp_path: Path, tiny_args: list[str]) -> None:
    out = tmp_path / "fp16"
    assert main(["train", *tiny_args, "--device", "cuda", "--amp", "fp16", "--out", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "amp_skipped_steps" in record
