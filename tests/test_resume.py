"""Exact resume: a run stopped at any step (a signal, a crash after a ``checkpoint_every`` save, an
epoch end) and resumed writes the same metrics.jsonl as the run that never stopped, to the last
digit; a longer ``--epochs`` is the longer run; the history comes from the checkpoint."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from densemtl.errors import ConfigError, Interrupted
from densemtl.training.checkpoint import load_checkpoint
from densemtl.training.config import resolve_config
from densemtl.training.trainer import Trainer

# 12 training images in batches of 4: 3 steps per epoch; diagnostics sampled every 2nd step.
TINY: dict[str, Any] = {
    "size": (32, 40),
    "n_train": 12,
    "n_val": 4,
    "batch_size": 4,
    "arch_args": {"width": 0.125, "depth_stages": 3},
    "diagnostics_every": 2,
}

# the figures at the end of a run take most of a tiny run's time and decide nothing here
pytestmark = pytest.mark.usefixtures("no_plots")


def records(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock times."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time_s")
        out.append(rec)
    return out


def trainer(out: Path, resume: bool = False, **values: Any) -> Trainer:
    return Trainer(resolve_config({**TINY, **values}), out, resume=resume, progress=False, log=lambda _: None)


_reference: dict[tuple[Any, ...], list[dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """The records of an uninterrupted run of ``values`` (computed once per module)."""

    def get(**values: Any) -> list[dict[str, Any]]:
        key = tuple(sorted((k, repr(v)) for k, v in values.items()))
        if key not in _reference:
            out = tmp_path_factory.mktemp("ref") / "run"
            trainer(out, **values).run()
            _reference[key] = records(out)
        return _reference[key]

    return get


def after_steps(t: Trainer, k: int, action: Callable[[], None]) -> None:
    """Call ``action`` after the trainer's ``k``-th training step (counted over the whole session)."""
    inner = t.train_batch
    done = 0

    def counted(epoch: int, batch: Any) -> Any:
        nonlocal done
        result = inner(epoch, batch)
        done += 1
        if done == k:
            action()
        return result

    t.train_batch = counted  # type: ignore[method-assign]


def signal_after(t: Trainer, k: int, signum: int = signal.SIGTERM) -> None:
    """Behave as if ``signum`` arrived during the ``k``-th step."""
    after_steps(t, k, lambda: setattr(t.signals, "received", signum))


@pytest.mark.parametrize("method", ["ew", "famo", "rlw"])
def test_a_run_stopped_mid_epoch_resumes_exactly(method: str, tmp_path: Path, reference: Callable) -> None:
    run = tmp_path / "run"
    t = trainer(run, method=method, epochs=3)
    signal_after(t, 4)  # epoch 2, step 1 of 3
    with pytest.raises(Interrupted, match=r"SIGTERM at epoch 2 step 1; checkpoint saved; .*--resume --out") as e:
        t.run()
    assert e.value.exit_code == 143
    state = load_checkpoint(run)
    assert (state["epoch"], state["step"]) == (1, 1)
    assert [r["epoch"] for r in records(run)] == [0, 1]
    trainer(run, resume=True, method=method, epochs=3).run()
    assert records(run) == reference(method=method, epochs=3)


def test_a_crash_resumes_from_the_last_periodic_checkpoint(tmp_path: Path, reference: Callable) -> None:
    run = tmp_path / "run"
    t = trainer(run, method="pcgrad", epochs=3, checkpoint_every=2)

    def crash() -> None:
        raise RuntimeError("simulated crash")

    after_steps(t, 6, crash)  # epoch 2 step 3; the last save was at epoch 2 step 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        t.run()
    state = load_checkpoint(run)
    assert (state["epoch"], state["step"]) == (1, 2)
    trainer(run, resume=True, method="pcgrad", epochs=3, checkpoint_every=2).run()
    assert records(run) == reference(method="pcgrad", epochs=3, checkpoint_every=2)
    assert records(run) == reference(method="pcgrad", epochs=3)  # periodic saves change nothing


def test_a_run_stopped_at_an_epoch_end_resumes_exactly(tmp_path: Path, reference: Callable) -> None:
    run = tmp_path / "run"
    t = trainer(run, method="rlw", epochs=3)
    validate = t.validate
    calls = 0

    def validate_then_signal() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:  # epoch 1's validation
            t.signals.received = signal.SIGINT
        return validate()

    t.validate = validate_then_signal  # type: ignore[method-assign]
    with pytest.raises(Interrupted, match="SIGINT at the end of epoch 1") as e:
        t.run()
    assert e.value.exit_code == 130
    assert (load_checkpoint(run)["epoch"], load_checkpoint(run)["step"]) == (1, 0)
    trainer(run, resume=True, method="rlw", epochs=3).run()
    assert records(run) == reference(method="rlw", epochs=3)


@pytest.mark.parametrize("damage", ["torn", "emptied"])
def test_extending_a_run_equals_the_longer_run_and_ignores_a_damaged_history(
    damage: str, tmp_path: Path, reference: Callable
) -> None:
    # The case: --epochs 2, then --resume --epochs 4, equals --epochs 4. The schedule does not
    # depend on --epochs (the demo preset's lr_step is 10; here 2, so the extension crosses a decay).
    run = tmp_path / "run"
    trainer(run, method="famo", epochs=2, lr_step=2).run()
    path = run / "metrics.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 25] if damage == "torn" else "")
    trainer(run, resume=True, method="famo", epochs=4, lr_step=2).run()
    expected = reference(method="famo", epochs=4, lr_step=2)
    assert [r["lr"] for r in expected] == [2e-3, 2e-3, 2e-3, 1e-3, 1e-3]
    assert records(run) == expected
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 4
    assert json.loads((run / "summary.json").read_text())["epochs"] == 4


def test_extending_with_the_default_schedule_is_exact(tmp_path: Path, reference: Callable) -> None:
    run = tmp_path / "run"
    trainer(run, epochs=2).run()
    trainer(run, resume=True, epochs=4).run()
    assert records(run) == reference(epochs=4)


def test_resuming_with_fewer_epochs_than_done_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer(run, epochs=2).run()
    before = {p.name: p.read_bytes() for p in (run / "config.yaml", run / "summary.json", run / "metrics.jsonl")}
    with pytest.raises(ConfigError, match=r"--epochs 1 is below the 2 epochs .* --epochs 2 or more"):
        trainer(run, resume=True, epochs=1)
    assert before == {p: (run / p).read_bytes() for p in before}


def test_checkpoints_hold_plain_values_and_best_follows_the_bench_rule(tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer(run, epochs=2, checkpoint_every=1).run()
    state = load_checkpoint(run)  # weights_only=True
    assert set(state["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert len(state["history"]) == 3 and state["step"] == 0
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] in (1, 2) and isinstance(best["score"], float)
