"""Non-finite training stops with a message naming the task, epoch and step (or skips the step under
``skip_nonfinite``); divergence is warned about once; a run that fails before its first
checkpoint leaves nothing behind, one that fails after it stays resumable; a bad ``--out`` is
refused before anything is written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from torch import Tensor

from densemtl.engine import Engine, StepResult
from densemtl.errors import ConfigError, RuntimeFault
from densemtl.training.checkpoint import load_checkpoint
from densemtl.training.config import resolve_config
from densemtl.training.member import Member
from densemtl.training.schemes import Single
from densemtl.training.trainer import Trainer

# 8 training images in batches of 4: 2 steps per epoch.
TINY: dict[str, Any] = {
    "size": (32, 40),
    "n_train": 8,
    "n_val": 2,
    "batch_size": 4,
    "arch_args": {"width": 0.125, "depth_stages": 3},
    "diagnostics_every": 0,
}

# the figures at the end of a run take most of a tiny run's time and decide nothing here
pytestmark = pytest.mark.usefixtures("no_plots")


LIVE: list[Trainer] = []  # the trainer being run, whose (epoch, step) the poison reads


def trainer(out: Path, resume: bool = False, **values: Any) -> Trainer:
    t = Trainer(resolve_config({**TINY, **values}), out, resume=resume, progress=False, log=lambda _: None)
    LIVE.append(t)
    return t


def poison(
    monkeypatch: pytest.MonkeyPatch, task: str, steps: set[tuple[int, int]], factor: float = float("nan")
) -> None:
    """Multiply ``task``'s loss by ``factor`` in the training steps ``steps`` ((epoch, step), 1-based)."""
    original = Engine.task_loss_parts

    def parts(self: Engine, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> list[Tensor]:
        out = original(self, preds, batch)
        t = LIVE[-1]
        if (t.epoch + 1, t.step + 1) in steps:
            out[self.tasks.index(task)] = out[self.tasks.index(task)] * factor
        return out

    monkeypatch.setattr(Engine, "task_loss_parts", parts)


@pytest.mark.parametrize("method", ["ew", "pcgrad"])  # a loss weighting, and a method whose engine refuses
def test_a_nan_loss_before_the_first_checkpoint_stops_and_leaves_nothing(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison(monkeypatch, "depth", {(1, 2)})
    run = tmp_path / "run"
    with pytest.raises(RuntimeFault) as e:
        trainer(run, method=method, epochs=2).run()
    text = str(e.value)
    assert "'depth'" in text and "epoch 1 step 2" in text and "--skip-nonfinite" in text and "lower --lr" in text
    assert "\n" not in text
    assert not run.exists()  # the same --out works again
    monkeypatch.undo()
    trainer(run, method=method, epochs=1).run()


def test_a_nan_after_a_checkpoint_keeps_the_run_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, "seg", {(2, 1)})
    run = tmp_path / "run"
    with pytest.raises(
        RuntimeFault, match=r"at epoch 2 step 1: the loss of task 'seg' is nan; the last good checkpoint .* was kept"
    ):
        trainer(run, epochs=2).run()
    assert load_checkpoint(run)["epoch"] == 1
    monkeypatch.undo()
    trainer(run, resume=True, epochs=2).run()
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_skip_nonfinite_skips_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, "depth", {(1, 2)}, float("inf"))
    run = tmp_path / "run"
    trainer(run, epochs=2, skip_nonfinite=1).run()
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite_steps") for r in recs] == [None, 1, 0]
    assert all(v == v and abs(v) < float("inf") for r in recs[1:] for v in r["train_loss"].values())
    poison(monkeypatch, "depth", {(1, 1), (1, 2)})
    with pytest.raises(RuntimeFault, match=r"\(1 such steps were already skipped\)"):
        trainer(tmp_path / "again", epochs=1, skip_nonfinite=1).run()


class InfUpdate(Single):
    """A scheme whose second step leaves an infinite gradient (finite losses): a bad update."""

    def step(self, members: Any, batch: dict[str, Tensor]) -> list[StepResult]:
        results = super().step(members, batch)
        member: Member = members[0]
        if member.engine.step_count == 2:
            next(p for p in member.model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        return results


def test_a_non_finite_update_stops_the_run(tmp_path: Path) -> None:
    cfg = resolve_config({**TINY, "epochs": 1})
    t = Trainer(cfg, tmp_path / "run", scheme=InfUpdate(cfg), progress=False, log=lambda _: None)
    LIVE.append(t)
    with pytest.raises(RuntimeFault, match=r"epoch 1 step 2: the update .*'ew'.* is non-finite"):
        t.run()


def test_divergence_is_warned_about_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    poison(monkeypatch, "seg", {(1, 2), (2, 1), (2, 2)}, 1e9)
    trainer(tmp_path / "run", epochs=2).run()
    err = capsys.readouterr().err
    assert err.count("diverging") == 1 and "'seg'" in err and "epoch 1 step 2" in err


def test_a_bad_out_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        trainer(file, epochs=1)
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        trainer(file / "run", epochs=1)
    assert file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_out_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RuntimeFault, match="permission denied"):
            trainer(locked / "run", epochs=1)
    finally:
        locked.chmod(0o700)


def test_a_failure_in_an_existing_empty_out_empties_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison(monkeypatch, "depth", {(1, 1)})
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(RuntimeFault, match="epoch 1 step 1"):
        trainer(run, epochs=1).run()
    assert run.is_dir() and not any(run.iterdir())
