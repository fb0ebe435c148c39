"""``densemtl speed`` and ``measure_speed``: output shape, rows, errors. Never asserts a timing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from densemtl import methods as method_registry
from densemtl import models as model_registry
from densemtl.balancing.base import Aggregator
from densemtl.bench.memory import MemoryProbe
from densemtl.bench.speed import NaiveLoop, make_batch, measure_speed
from densemtl.cli.main import main
from densemtl.engine import Engine
from densemtl.tasks import compute_losses, task_channels

TINY = ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--size", "32x40", "--batch-size", "2"]
TINY += ["--repeats", "1", "--warmup", "1", "--quiet"]
TINY_KW: dict[str, Any] = {
    "arch_args": {"width": 0.125, "depth_stages": 3},
    "size": (32, 40),
    "batch_size": 2,
    "repeats": 1,
    "warmup": 1,
}
RESULT_KEYS = {"method", "mode", "ratio_to_ew", "mem_ratio", "step_ms"}


@pytest.fixture(scope="module")
def speed_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    assert main(["speed", *TINY, "--methods", "mgda,pcgrad,uw", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_json_shape(speed_json: dict[str, Any]) -> None:
    assert set(speed_json) == {"results", "settings"}
    for row in speed_json["results"]:
        assert set(row) >= RESULT_KEYS
        assert row["status"] == "ok"
        assert row["step_ms"] > 0 and row["mem_ratio"] > 0
        assert len(row["times_ms"]) == 1
    settings = speed_json["settings"]
    assert settings["size"] == [32, 40] and settings["batch_size"] == 2 and settings["repeats"] == 1
    assert settings["arch_args"] == {"width": 0.125, "depth_stages": 3}
    assert {"device", "cpu_count", "torch_threads", "memory"} <= set(settings)


def test_rows_ew_and_naive(speed_json: dict[str, Any]) -> None:
    rows = {r["method"]: r for r in speed_json["results"]}
    assert list(rows) == ["ew", "mgda", "pcgrad", "uw", "naive-loop"]
    assert rows["ew"]["ratio_to_ew"] == 1.0 and rows["ew"]["mem_ratio"] == 1.0 and rows["ew"]["mode"] == "loss"
    assert rows["naive-loop"]["mode"] == "parameters"
    assert rows["uw"]["mode"] == "loss"
    assert rows["mgda"]["mode"] == "representation"  # segnet has a shared representation
    assert rows["pcgrad"]["mode"] == "parameters" and rows["pcgrad"]["ratio_to_naive"] is not None
    assert rows["pcgrad"]["met"] in (True, False) and rows["ew"]["met"] is None


def test_cli_prints_a_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["speed", *TINY, "--methods", "upgrad", "--grad-mode", "representation"]) == 0
    out = capsys.readouterr().out
    assert "x EW" in out and "naive-loop" in out
    assert any(line.startswith("upgrad") and "representation" in line for line in out.splitlines())


def test_gramian_mode_rows(capsys: pytest.CaptureFixture) -> None:
    assert main(["speed", *TINY, "--methods", "imtl", "--grad-mode", "gramian"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["imtl"][1] == "gramian" and rows["naive-loop"][1] == "parameters"
    # A method named on the command line that cannot use the mode is an error, not a row.
    assert main(["speed", *TINY, "--methods", "imtl,graddrop", "--grad-mode", "gramian"]) == 2
    assert "GradDrop needs the per-task gradients" in capsys.readouterr().err


def test_all_methods_by_default_and_na_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a few names registered, to stay fast; the default is "every registered method".
    keep = {n: method_registry.METHODS._factories[n] for n in ("ew", "uw", "imtl", "graddrop")}
    monkeypatch.setattr(method_registry.METHODS, "_factories", keep)
    rows = {r["method"]: r for r in measure_speed(None, recompute_every=4, **TINY_KW)}
    assert set(rows) == {"ew", "uw", "imtl", "graddrop", "naive-loop"}
    assert rows["uw"]["status"] == "n/a" and rows["graddrop"]["status"] == "n/a"
    assert rows["imtl"]["status"] == "ok" and rows["imtl"]["recompute_every"] == 4
    assert rows["ew"]["recompute_every"] == 1 and rows["ew"]["ratio_to_ew"] == 1.0


def test_the_timed_step_includes_after_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # FAMO re-evaluates the batch after each optimizer step: that forward is part of its cost.
    calls: list[str] = []
    after_step = Engine.after_step

    def spy(engine: Engine, batch: dict[str, torch.Tensor]) -> None:
        calls.append(type(engine.method).__name__)
        after_step(engine, batch)

    monkeypatch.setattr(Engine, "after_step", spy)
    rows = {r["method"]: r for r in measure_speed(["famo"], **TINY_KW)}
    assert rows["famo"]["status"] == "ok"
    assert calls.count("FAMO") == 3  # warm-up, memory probe and timed unit: one step each


def test_method_variants_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    # "name:key=value" times a method with knobs, next to the plain method, in one table.
    updates: list[str] = []
    after_step = Engine.after_step

    def spy(engine: Engine, batch: dict[str, torch.Tensor]) -> None:
        updates.append(getattr(engine.method, "update", "none"))
        after_step(engine, batch)

    monkeypatch.setattr(Engine, "after_step", spy)
    rows = {r["method"]: r for r in measure_speed(["famo", "famo:update=next_batch"], **TINY_KW)}
    assert rows["famo"]["status"] == rows["famo:update=next_batch"]["status"] == "ok"
    assert updates.count("same_batch") == updates.count("next_batch") == 3
    assert "time<=1.4xEW" in rows["famo:update=next_batch"]["target"]  # the method's own bound


class _Failing(Aggregator):
    def aggregate(self, J: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("solver did not converge")


def _broken(bad_knob: int) -> Aggregator:
    raise AssertionError("unreachable")


def test_failing_methods_are_error_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(method_registry.METHODS._factories, "zz-broken", _broken)
    monkeypatch.setitem(method_registry.METHODS._factories, "zz-failing", _Failing)
    rows = {r["method"]: r for r in measure_speed(["zz-broken", "zz-failing", "uw"], **TINY_KW)}
    assert rows["zz-broken"]["status"] == "error" and "construction" in rows["zz-broken"]["error"]
    assert rows["zz-failing"]["status"] == "error" and "solver did not converge" in rows["zz-failing"]["error"]
    assert rows["zz-failing"]["ratio_to_ew"] is None
    assert rows["uw"]["status"] == "ok" and rows["naive-loop"]["status"] == "ok"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--methods", "nosuch"], "valid:"),
        (["--methods", "famo:update"], "key=value"),
        (["--methods", "nosuch:update=x"], "valid:"),
        (["--methods", "mgda", "--grad-mode", "loss"], "--grad-mode loss"),
        (["--methods", "uw", "--grad-mode", "parameters"], "loss weighting"),
        (["--methods", "uw", "--recompute-every", "4"], "--recompute-every 4"),
        (["--grad-mode", "sideways"], "not a mode"),
        (["--size", "8x8"], "--size"),
        (["--size", "big"], "--size"),
        (["--tasks", "seg,edges"], "--tasks"),
        (["--repeats", "0"], "--repeats"),
        (["--arch", "nosuch"], "architecture"),
        (["--json", "/nonexistent/dir/x.json"], "--json"),
        (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
    ],
)
def test_bad_input_one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["speed", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("densemtl: error:") and needle in err


def test_amp_bf16_times_every_row_under_autocast(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """``--amp bf16``: each row's forward runs under autocast (the naive loop's too); the JSON says so."""
    seen: list[torch.dtype] = []
    forward = model_registry.MultiTaskModel.__call__

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return forward(model, *args, **kwargs)

    monkeypatch.setattr(model_registry.MultiTaskModel, "__call__", spy)
    out = tmp_path / "amp.json"
    assert main(["speed", *TINY, "--methods", "pcgrad", "--amp", "bf16", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["amp"] == "bf16"
    assert all(r["status"] == "ok" for r in data["results"])
    assert seen and set(seen) == {torch.bfloat16}


def test_naive_loop_writes_the_mean_of_task_gradients() -> None:
    tasks = ("seg", "depth", "normal")
    batch = make_batch((32, 40), 2, tasks, 7, 0, torch.device("cpu"))
    torch.manual_seed(0)
    model = model_registry.create("segnet", task_channels(tasks, 7), width=0.125, depth_stages=3)
    model.eval()  # batch-norm statistics fixed, so both passes see the same function
    shared = model.shared_parameters()
    losses = compute_losses(model(batch["image"]), batch, tasks)
    per_task = [torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True) for t in tasks]
    NaiveLoop(model, tasks).step(batch)
    for k, p in enumerate(shared):
        rows = [g[k] if g[k] is not None else torch.zeros_like(p) for g in per_task]
        torch.testing.assert_close(p.grad, torch.stack(rows).mean(0), rtol=1e-4, atol=1e-6)


def test_memory_probe_counts_live_tensors_since_it_opened() -> None:
    with MemoryProbe(torch.device("cpu")) as probe:
        kept = torch.empty(1_000_000)  # 4 MB, alive through the window
        with probe.window():
            temp = torch.empty(500_000)  # 2 MB, freed inside the window
            del temp
    assert probe.peak_bytes is not None
    assert 6_000_000 <= probe.peak_bytes < 6_500_000
    del kept
