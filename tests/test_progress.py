"""Progress off a terminal: one line every N seconds (``DENSEMTL_PROGRESS_EVERY``) for train,
bench and speed, in one format; a tqdm bar on a terminal; nothing when asked for quiet."""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.report.progress import (
    PROGRESS_ENV,
    ProgressLine,
    background_line,
    duration,
    progress,
    progress_every,
    ticking,
)

#: every progress line: "densemtl CMD: [desc, ]UNIT n/total (p%), X elapsed, ETA Y[ (run ~Z)][, postfix]"
LINE = re.compile(r"^densemtl (train|bench|speed): (.+, )?[a-z ]+ \d+/\d+ \(\d+%\), \S+ elapsed, ETA \S+")


class Clock:
    """A fake monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_n_seconds_with_step_epoch_and_eta() -> None:
    clock, out = Clock(), io.StringIO()
    line = ProgressLine(
        range(10), desc="epoch 2/3", prefix="densemtl train", total=10, later=10, every=30, stream=out, clock=clock
    )
    it = iter(line)
    next(it)
    for _ in range(3):  # 3 steps done in 15 s: no line yet
        clock.now += 5
        next(it)  # the loop asks for the next batch: the previous step is done
    line.set_postfix({"seg": "0.412"})
    assert out.getvalue() == "" and line.lines == 0
    clock.now += 25  # 40 s in, the 4th step done: 10 s a step, past the 30 s mark: one line
    next(it)
    text = out.getvalue()
    assert text.count("\n") == 1 and LINE.match(text), text
    assert text.strip() == (
        "densemtl train: epoch 2/3, step 4/10 (40%), 40s elapsed, ETA 1m00s (run ~2m40s), seg=0.412"
    )
    next(it)  # 1 s later: nothing more until the next 30 s have passed
    assert out.getvalue().count("\n") == 1


def test_eta_before_any_step_and_durations() -> None:
    clock = Clock()
    line = ProgressLine(total=5, prefix="densemtl bench", unit="runs done", estimate=600, every=1, clock=clock)
    clock.now += 60
    assert "runs done 0/5 (0%), 1m00s elapsed, ETA ~9m00s" in line.line()
    assert "ETA ?" in ProgressLine(total=5, every=1, clock=clock).line()
    line.update(1)  # the first run took 60 s: 4 more to go
    assert line.line().endswith("runs done 1/5 (20%), 1m00s elapsed, ETA 4m00s")
    clock.now += 30  # between two runs the ETA counts down, it does not grow with the wait
    assert line.line().endswith("ETA 3m30s")
    assert [duration(s) for s in (0.4, 59, 61, 3600 * 2 + 180)] == ["0s", "59s", "1m01s", "2h03m"]


def test_progress_picks_a_bar_a_line_or_nothing() -> None:
    bar = progress(range(3), terminal=True, stream=io.StringIO())
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    off = progress(range(3), terminal=False, stream=io.StringIO(), every=5)
    assert isinstance(off, ProgressLine) and list(off) == [0, 1, 2]
    quiet = progress(range(3), terminal=False, enabled=False)
    assert not isinstance(quiet, ProgressLine) and list(quiet) == [0, 1, 2]
    assert not isinstance(progress(range(3), terminal=False, every=0), ProgressLine)
    assert background_line(3, terminal=True, every=5) is None  # a terminal has the runs' own lines


def test_the_interval_comes_from_the_environment() -> None:
    assert progress_every({}) == 30.0 and progress_every({PROGRESS_ENV: "2.5"}) == 2.5
    assert progress_every({PROGRESS_ENV: "0"}) == 0.0
    for bad in ("soon", "-1", "inf"):
        with pytest.raises(ConfigError, match=PROGRESS_ENV):
            progress_every({PROGRESS_ENV: bad})


def test_ticking_writes_while_the_work_happens_elsewhere() -> None:
    out = io.StringIO()
    line = background_line(4, prefix="densemtl bench", unit="runs done", stream=out, every=0.02, terminal=False)
    assert line is not None
    with ticking(line, poll=0.01):
        time.sleep(0.15)
        line.update(1)
        time.sleep(0.1)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(LINE.match(t) for t in lines), lines
    assert "runs done 1/4" in lines[-1]


def test_the_estimate_line() -> None:
    from densemtl.bench.estimate import Estimate

    line = Estimate(1500, 24, 2, timed=8, configs=8).line()
    assert line == (
        "densemtl bench: estimated ~25 min for 24 runs on 2 jobs "
        "(one training step of each of its 8 configuration(s), timed on this machine)"
    )
    line = Estimate(4 * 3600, 24, 1, timed=3, configs=8).line()
    assert "estimated ~4.0 h for 24 runs on 1 job (" in line and "3 of its 8 configurations" in line


# -- the commands ---------------------------------------------------------------------------------
TINY = ["--size", "32x40", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "2",
        "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]  # fmt: skip


@pytest.mark.usefixtures("no_plots")
def test_train_prints_progress_lines_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "0.000001")  # a line at every step
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    lines = [t for t in out.splitlines() if t.startswith("densemtl train:")]
    assert len(lines) == 4 and all(LINE.match(t) for t in lines), lines  # 2 epochs × 2 steps, beside the table
    assert lines[0].startswith("densemtl train: epoch 1/2, step 1/2 (50%)") and "(run ~" in lines[0]
    assert "densemtl train:" not in err  # standard error keeps warnings and errors only
    monkeypatch.setenv(PROGRESS_ENV, "0.000001")
    assert main(["train", *TINY, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert "densemtl train:" not in capsys.readouterr().out


def test_speed_prints_lines_not_a_flood(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["speed", "--methods", "uw", "--size", "32x32", "--batch-size", "2", "--arch-arg", "width=0.125",
            "--arch-arg", "depth_stages=3", "--warmup", "1", "--repeats", "2"]  # fmt: skip
    monkeypatch.setenv(PROGRESS_ENV, "3600")
    assert main(args) == 0
    assert not any(LINE.match(t) for t in capsys.readouterr().out.splitlines())  # none before an interval
    monkeypatch.setenv(PROGRESS_ENV, "0.000001")
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = [t for t in out.splitlines() if LINE.match(t)]
    assert lines[0].startswith("densemtl speed: warm-up, method 1/3 (33%)"), lines  # ew, uw, the naive loop
    assert any(t.startswith("densemtl speed: timing, step 6/6 (100%)") for t in lines), lines  # × 2 repeats
    assert "densemtl speed:" not in err


def test_bench_estimates_then_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DENSEMTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(PROGRESS_ENV, "0.000001")
    tiny = ["--size", "32x40", "--n-train", "6", "--n-val", "2", "--batch-size", "6", "--epochs", "1",
            "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--val-fraction", "0.34"]  # fmt: skip
    assert main(["bench", "--methods", "ew", "--seeds", "1", *tiny, "--out", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"densemtl bench: estimated (<1 min|~\d+ min|~[\d.]+ h) for 2 runs on 1 job \(", out), out
    assert "best on segnet: ew (Δm% " in out and "± n/a, one seed)" in out
    lines = [t for t in out.splitlines() if LINE.match(t)]
    assert lines and all(t.startswith("densemtl bench: runs done ") for t in lines), out
    assert lines[-1].startswith("densemtl bench: runs done 2/2 (100%)") and err == ""
    assert os.path.isfile(tmp_path / "b" / "results.md")


def test_a_bad_interval_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "soon")
    assert main(["bench", "--out", str(tmp_path / "b")]) == 2
    assert main(["speed", "--methods", "uw", "--json", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(PROGRESS_ENV in t for t in err), err
    assert list(tmp_path.iterdir()) == []
