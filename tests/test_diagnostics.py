"""Training diagnostics: task-gradient cosines, per-block balance, their records, plots and TensorBoard."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from densemtl.cli.main import main
from densemtl.training.diagnostics import Diagnostics, block_of, flatten_scalars, task_gradient_stats

TINY = [
    "--size",
    "32x40",
    "--n-train",
    "4",
    "--n-val",
    "2",
    "--batch-size",
    "2",
    "--epochs",
    "2",
    "--arch-arg",
    "width=0.125",
    "--arch-arg",
    "depth_stages=3",
    "--quiet",
]


class TwoTask(nn.Module):
    """A shared two-block trunk (with BatchNorm and dropout) and two linear heads."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh()),
            nn.Sequential(nn.Dropout(0.3), nn.Linear(5, 4)),
        )
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 2)})

    def shared(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if n.startswith("trunk.")]

    def losses(self, x: Tensor) -> Tensor:
        h = self.trunk(x)
        return torch.stack([self.heads["a"](h).pow(2).mean(), (self.heads["b"](h) - 1).abs().mean()])


def test_block_grouping() -> None:
    assert block_of("trunk.encoder.0.0.0.weight") == "trunk.encoder.0"
    assert block_of("backbone.layer4.2.conv3.weight") == "backbone.layer4.2"
    assert block_of("backbone.conv1.weight") == "backbone.conv1"
    assert block_of("decoder_units.1.alpha") == "decoder_units.1"
    assert block_of("alpha") == "alpha"


def test_cosine_and_balance_match_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = TwoTask().eval()  # deterministic forward: both computations see the same graph values
    x = torch.randn(6, 3)
    named = model.shared()
    params = [p for _, p in named]
    stats = task_gradient_stats(model.losses(x), named)

    losses = model.losses(x)
    g = [torch.cat([v.reshape(-1) for v in torch.autograd.grad(losses[t], params, retain_graph=True)]) for t in (0, 1)]
    expected = torch.nn.functional.cosine_similarity(g[0], g[1], dim=0)
    assert stats.cosine[0, 1].item() == pytest.approx(expected.item(), abs=1e-6)
    assert stats.cosine[1, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert stats.cosine.diagonal().tolist() == pytest.approx([1.0, 1.0])

    assert set(stats.block_norms) == {"trunk.0", "trunk.1"}
    for block in ("trunk.0", "trunk.1"):
        idx = [i for i, (n, _) in enumerate(named) if n.startswith(block + ".")]
        for t in (0, 1):
            grads = torch.autograd.grad(model.losses(x)[t], [params[i] for i in idx])
            direct = torch.sqrt(sum(v.pow(2).sum() for v in grads))
            assert stats.block_norms[block][t].item() == pytest.approx(direct.item(), rel=1e-6)
    for share in stats.shares().values():
        assert share.sum().item() == pytest.approx(1.0)


def test_measure_leaves_buffers_rng_and_grads_untouched() -> None:
    torch.manual_seed(1)
    model = TwoTask().train()
    batch = {"image": torch.randn(4, 3)}
    diag = Diagnostics(model, ("a", "b"), lambda m, b: m.losses(b["image"]), model.shared(), every=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    diag.observe(batch, step=1)  # not due
    assert diag.n == 0
    diag.observe(batch, step=2)
    diag.observe(batch, step=4)
    assert diag.n == 2
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    summary = diag.summary()
    assert set(summary["grad_cosine"]) == {"a|b"} and -1 <= summary["grad_cosine"]["a|b"] <= 1
    for shares in summary["layer_balance"].values():
        assert sum(shares.values()) == pytest.approx(1.0)
    diag.reset()
    assert diag.summary() == {"grad_cosine": None, "layer_balance": None, "diagnostic_steps": 0}
    off = Diagnostics(model, ("a", "b"), lambda m, b: m.losses(b["image"]), model.shared(), every=0)
    off.observe(batch, step=0)
    assert off.summary() == {}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """``trained(method, every)``: the TINY run (2 epochs) of ``method`` with ``--diagnostics-every
    every``, trained once for this module's tests (read only)."""
    runs: dict[tuple[str, int], Path] = {}

    def get(method: str, every: int) -> Path:
        if (method, every) not in runs:
            out = tmp_path_factory.mktemp("diagnostics") / f"{method}-{every}"
            argv = ["train", *TINY, "--method", method, "--diagnostics-every", str(every), "--out", str(out)]
            assert main(argv) == 0
            runs[method, every] = out
        return runs[method, every]

    return get


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_training_records_diagnostics_without_changing_the_weights(
    method: str, trained: Callable[[str, int], Path]
) -> None:
    on, off = trained(method, 1), trained(method, 0)
    a = torch.load(on / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(off / "checkpoints" / "last.pt", weights_only=False)["model"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k

    recs = _records(on)
    assert "grad_cosine" not in recs[0]
    for r in recs[1:]:
        assert set(r["grad_cosine"]) == {"seg|depth", "seg|normal", "depth|normal"}
        assert r["diagnostic_steps"] == 2  # 4 images / batch 2, every step sampled
        assert r["layer_balance"] and all(
            set(s) == {"seg", "depth", "normal"} and sum(s.values()) == pytest.approx(1.0)
            for s in r["layer_balance"].values()
        )
        assert set(r["weights"]) == set(r["train_loss"]) == {"seg", "depth", "normal"}
    assert (on / "plots" / "grad_cosine.png").is_file() and (on / "plots" / "layer_balance.png").is_file()

    assert not any(k in r for r in _records(off) for k in ("grad_cosine", "layer_balance", "diagnostic_steps"))
    assert not (off / "plots" / "grad_cosine.png").exists() and not (off / "plots" / "layer_balance.png").exists()


def test_negative_interval_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", *TINY, "--diagnostics-every", "-1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "diagnostics_every" in err


def test_flatten_scalars() -> None:
    rec = {"epoch": 3, "val": {"seg": {"miou": 0.5, "x": None}}, "grad_cosine": {"a|b": -0.2}, "lr": 1e-3}
    assert flatten_scalars(rec) == {"val/seg/miou": 0.5, "grad_cosine/a|b": -0.2, "lr": 1e-3}


def test_tensorboard_works_or_says_install(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "tb"
    args = ["train", *TINY, "--epochs", "1", "--diagnostics-every", "1", "--tensorboard", "--out", str(run)]
    if importlib.util.find_spec("tensorboard") is None:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "install tensorboard" in err
        assert not (run / "metrics.jsonl").exists()
    else:
        assert main(args) == 0
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_with_diagnostics_is_exact(tmp_path: Path, trained: Callable[[str, int], Path]) -> None:
    whole, split = trained("ew", 1), tmp_path / "split"  # equal weighting, the default
    assert main(["train", *TINY, "--epochs", "1", "--diagnostics-every", "1", "--out", str(split)]) == 0
    assert main(["train", "--out", str(split), "--resume", "--epochs", "2", "--quiet"]) == 0
    a, b = _records(whole)[-1], _records(split)[-1]
    assert a["grad_cosine"] == b["grad_cosine"] and a["layer_balance"] == b["layer_balance"]
