"""``densemtl speed --world-size N``: steps timed in spawned gloo ranks, with the bytes each rank
communicates. Never asserts a timing, only what was measured and what was sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from densemtl.bench.speed_ddp import measure_speed_ddp
from densemtl.cli.main import main

TINY = ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--size", "32x40", "--batch-size", "4"]
TINY += ["--repeats", "1", "--warmup", "1", "--quiet"]
TINY_KW: dict[str, Any] = {
    "arch_args": {"width": 0.125, "depth_stages": 3},
    "size": (32, 40),
    "batch_size": 4,
    "repeats": 1,
    "warmup": 1,
}
METHODS = ("uw", "famo", "pcgrad", "nashmtl")


@pytest.mark.slow
def test_two_ranks_report_bytes_and_ratios(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every listed method steps in 2 processes and sends bytes; EW is the baseline of both
    ratios; the table says whose time and whose bytes it shows."""
    out = tmp_path / "ddp.json"
    assert main(["speed", *TINY, "--world-size", "2", "--methods", ",".join(METHODS), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 processes (gloo" in printed and "max over ranks" in printed and "bytes/step, rank 0" in printed
    data = json.loads(out.read_text())
    assert data["settings"]["world_size"] == 2 and data["settings"]["batch_size"] == 4
    rows = {r["method"]: r for r in data["results"]}
    assert list(rows) == ["ew", *METHODS]  # no naive-loop row: it is a one-process reference
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("error"))
        assert row["step_ms"] > 0 and row["bytes_per_step"] > 0 and len(row["times_ms"]) == 1
    assert rows["ew"]["ratio_to_ew"] == 1.0 and rows["ew"]["bytes_ratio_to_ew"] == 1.0
    assert rows["ew"]["mode"] == rows["uw"]["mode"] == "loss"
    # a loss weighting sends what EW sends (the losses and the averaged gradients), give or take
    # its own few numbers; a per-task-gradient mode sends the T x P Jacobian on top
    assert rows["uw"]["bytes_ratio_to_ew"] == pytest.approx(1.0, abs=0.01)
    assert rows["pcgrad"]["mode"] == "parameters" and rows["pcgrad"]["bytes_ratio_to_ew"] > 1.5


@pytest.mark.slow
def test_gramian_in_representation_mode_sends_less() -> None:
    """A Gramian method's representation mode all-reduces T x T numbers where parameters mode
    all-reduces the T x P per-task gradients."""
    kw = {**TINY_KW, "warmup": 0}
    rep = {r["method"]: r for r in measure_speed_ddp(["nashmtl"], grad_mode="representation", **kw)}
    par = {r["method"]: r for r in measure_speed_ddp(["nashmtl"], grad_mode="parameters", **kw)}
    assert rep["nashmtl"]["mode"] == "representation" and par["nashmtl"]["mode"] == "parameters"
    assert 0 < rep["nashmtl"]["bytes_per_step"] < par["nashmtl"]["bytes_per_step"]
    # EW's step is the same in both runs: so are its bytes
    assert rep["ew"]["bytes_per_step"] == par["ew"]["bytes_per_step"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--world-size", "0"], "--world-size"),
        (["--world-size", "-1"], "--world-size"),
        (["--world-size", "65"], "--world-size"),
        (["--world-size", "two"], "--world-size"),
        (["--world-size", "2", "--batch-size", "1"], "--batch-size 1"),
        (["--world-size", "64", "--device", "cuda"], "GPU"),
        (["--world-size", "2", "--amp", "fp32"], "--amp"),
        (["--world-size", "2", "--methods", "uw", "--grad-mode", "parameters"], "loss weighting"),
    ],
)
def test_bad_values_one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    try:
        code = main(["speed", *TINY, *args])
    except SystemExit as e:  # refused by the argument parser itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("densemtl: error:") and needle in err, err
