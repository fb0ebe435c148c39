"""Every registered method trains; modes and knobs are checked at the door.

The method list is discovered from the registry, so a new method joins by being registered. Each
method trains in this process through the :class:`~densemtl.training.trainer.Trainer` at tiny
shapes (the session's ``method_run``, shared with tests/test_checkpoint_safety.py); one
``densemtl train`` per engine mode (loss, representation, gramian, parameters) runs end to end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import MethodRun
from densemtl.cli.main import main
from densemtl.methods import available

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
    "1",
    "--quiet",
]
SEGNET = ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
SINGLE = ["--arch", "single", "--arch-arg", "base_args={width: 0.125, depth_stages: 3}"]
#: the single-task baseline's knobs as the config holds them
SINGLE_VALUES: dict[str, Any] = {"arch": "single", "arch_args": {"base_args": {"width": 0.125, "depth_stages": 3}}}


def train(run: Path, *args: str, arch: list[str] = SEGNET) -> int:
    return main(["train", *TINY, *arch, *args, "--out", str(run)])


def finite(values: Any) -> bool:
    if isinstance(values, dict):
        return all(finite(v) for v in values.values())
    return isinstance(values, int | float) and math.isfinite(values)


def check_run(run: Path) -> dict[str, Any]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["epoch"] for r in records] == [0, 1]
    last = records[-1]
    assert set(last["train_loss"]) == {"seg", "depth", "normal"} and finite(last["train_loss"]), last
    assert finite(last["weights"]), last
    summary = json.loads((run / "summary.json").read_text())
    for task in ("seg", "depth"):
        assert finite(summary["metrics"][task]), summary["metrics"]
    return last


def check_trained(trained: MethodRun) -> dict[str, Any]:
    """:func:`check_run` on the run's files, and its parameters: finite, and moved (the shared ones,
    where the model has any: the single-task baseline has none)."""
    last = check_run(trained.out)
    assert all(bool(torch.isfinite(p).all()) for p in trained.after.values())
    moved = {k for k in trained.after if not torch.equal(trained.before[k], trained.after[k])}
    assert moved & trained.shared if trained.shared else moved, "no step reached the parameters"
    return last


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("densemtl: error:") and "\n" not in err, err
    return err


# -- every method, in this process -----------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_every_method_trains(name: str, method_run: Callable[..., MethodRun]) -> None:
    check_trained(method_run(name))


def test_famo_learns_from_the_re_evaluated_batch(method_run: Callable[..., MethodRun]) -> None:
    # The trainer calls engine.after_step: two steps give two logit updates (none without it).
    run = method_run("famo", method_args={"gamma": 0.0}).out
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["method"]["adam_steps"] == 2 and bool((state["method"]["logits"] != 0).any())


@pytest.mark.parametrize("name", ["imtl", "nashmtl"])
def test_gramian_mode_on_request(name: str, method_run: Callable[..., MethodRun]) -> None:
    check_trained(method_run(name, grad_mode="gramian"))


def test_recompute_every_with_a_gramian_method(method_run: Callable[..., MethodRun]) -> None:
    last = check_trained(method_run("imtl", recompute_every=4))
    assert abs(sum(last["weights"].values()) - 1.0) < 1e-5  # IMTL-G's weights sum to 1


def test_gradient_method_on_the_single_task_baseline(method_run: Callable[..., MethodRun]) -> None:
    check_trained(method_run("mgda", **SINGLE_VALUES))


def test_gradnorm_layer_knob(method_run: Callable[..., MethodRun]) -> None:
    check_trained(method_run("gradnorm", method_args={"layer": "trunk.encoder.0.0.0.weight"}))


# -- one `densemtl train` per engine mode, end to end ----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "mode"),
    [("ew", "loss"), ("pcgrad", "representation"), ("imtl", "gramian"), ("upgrad", "parameters")],
)
def test_cli_trains_in_each_mode(method: str, mode: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "--method", method, "--grad-mode", mode) == 0
    check_run(run)
    assert (run / "plots").is_dir() and (run / "checkpoints" / "last.pt").is_file()


# -- refused at the door ---------------------------------------------------------------------------
def test_gradnorm_layer_knob_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    assert train(bad, "--method", "gradnorm", "--method-arg", "layer=nope") == 2
    assert "'nope'" in one_line_error(capsys) and not bad.exists()


@pytest.mark.parametrize(
    "args, arch, expected",
    [
        (["--method", "ew", "--method-arg", "foo=1"], SEGNET, "no knob 'foo'"),
        (["--method", "cagrad", "--method-arg", "c=abc"], SEGNET, "knob 'c' must be a float"),
        (["--method", "pcgrad", "--grad-mode", "representation"], SINGLE, "no single shared representation"),
        (["--method", "mgda", "--grad-mode", "loss"], SEGNET, "needs per-task gradients"),
        (["--method", "ew", "--grad-mode", "parameters"], SEGNET, "loss weighting"),
        (["--method", "graddrop", "--grad-mode", "gramian"], SEGNET, "not only their Gramian"),
        (["--method", "graddrop", "--recompute-every", "2"], SEGNET, "cannot be reused"),
        (["--method", "dbmtl", "--recompute-every", "2"], SEGNET, "cannot be reused"),
        (["--method", "dbmtl", "--grad-mode", "representation"], SEGNET, "parameters mode only"),
        (["--method", "mao", "--grad-mode", "representation"], SEGNET, "parameters mode only"),
        (["--method", "nosuch"], SEGNET, "valid: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], arch: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(run, *args, arch=arch) == 2
    assert expected in one_line_error(capsys)
    assert not run.exists()
