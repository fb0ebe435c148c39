"""Flags that do nothing in the combination given (refused, or one warning line where a refusal
would break a legitimate use), the --workers cap, what --replan-schedule plans, and who prints a
mistake under torchrun (the refusals themselves are rows of docs/errors.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densemtl.cli.main import main
from densemtl.training import inert
from densemtl.training.config import resolve_config
from densemtl.training.inert import check_settings, inert_settings

pytestmark = pytest.mark.usefixtures("no_plots")  # the runs here are about their flags, not their figures

TINY = ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "4", "--quiet"]
TINY += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--diagnostics-every", "0"]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("densemtl: warning:")]


@pytest.mark.parametrize(
    "flags",
    [
        {"optimizer": "sgd", "momentum": 0.5},
        {"lr_schedule": "step", "lr_step": 3, "lr_gamma": 0.1, "epochs": 6},
        {"lr_schedule": "cosine", "warmup_epochs": 2, "epochs": 3},
        {"peer_arch": "segnet", "mimicry_weight": 2.0, "alpha_warmup_epochs": 1, "epochs": 2},
        {},
    ],
)
def test_flags_that_act_pass_quietly(flags: dict) -> None:
    said: list[str] = []
    cfg = resolve_config(flags)
    assert check_settings(cfg, flags, warn=said.append) == cfg and said == []


def test_the_demo_and_a_runs_own_config_are_not_questioned(tmp_path: Path) -> None:
    """The demo preset's lr_step 10 with a cosine schedule or 3 epochs, and a run's config.yaml
    (every key, the unused ones at their defaults) given as --config with a flag that switches."""
    said: list[str] = []
    for flags in ({"lr_schedule": "cosine"}, {"epochs": 3}, {"lr_schedule": "none", "optimizer": "adamw"}):
        check_settings(resolve_config(flags), flags, warn=said.append)
    saved = resolve_config({"epochs": 6}).to_dict()
    check_settings(resolve_config({"lr_schedule": "poly"}, yaml=_yaml(tmp_path, saved)), {}, saved, warn=said.append)
    assert said == []


def _yaml(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_config_files_unused_key_is_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A YAML preset's lr_step and momentum while the flags switch schedule and optimizer: the run
    goes on, with one warning line per key naming the file."""
    conf = _yaml(tmp_path, {"lr_step": 4, "momentum": 0.8, "optimizer": "sgd"})
    args = ["train", *TINY, "--epochs", "0", "--config", str(conf), "--lr-schedule", "cosine", "--optimizer", "adam"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert _warnings(capsys.readouterr().err) == [
        f"densemtl: warning: momentum: 0.8 in {conf} does nothing with --optimizer adam: it is sgd's "
        "(add --optimizer sgd or leave it out)",
        f"densemtl: warning: lr_step: 4 in {conf} does nothing with --lr-schedule cosine: it is the step "
        "schedule's (add --lr-schedule step or leave it out)",
    ]


def test_sync_bn_and_a_late_step_are_warned_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--sync-bn in one process (the same command runs under torchrun) and an --lr-step not below
    --epochs (the decay stays planned for a resume): one line each, the run goes on."""
    args = ["train", *TINY, "--epochs", "0", "--no-sync-bn", "--lr-step", "4", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert _warnings(capsys.readouterr().err) == [  # --epochs 0 trains nothing: no step to speak of
        "densemtl: warning: --no-sync-bn does nothing in one process: it is for a run under torchrun"
    ]
    said: list[str] = []
    check_settings(resolve_config({"epochs": 3, "lr_step": 3}), {"lr_step": 3, "lr_gamma": 0.2}, warn=said.append)
    assert said == [
        "densemtl: warning: --lr-step 3 is not below --epochs 3: the learning rate does not decay within this "
        "run (it would after epoch 3 of a --resume that extends the run)",
        "densemtl: warning: --lr-gamma 0.2 does nothing within this run: a decay every 3 epochs comes after "
        "--epochs 3 (it would after epoch 3 of a --resume that extends the run)",
    ]


def test_under_torchrun_sync_bn_acts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "sync_bn" not in [i.key for i in inert_settings(resolve_config({"sync_bn": True}))]


def test_bench_refuses_as_train_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--lr-schedule", "poly", "--lr-gamma", "0.3", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("densemtl: error: --lr-gamma 0.3 does nothing with --lr-schedule poly")
    assert not out.exists()


# -- workers -----------------------------------------------------------------------------------------
def test_workers_are_capped_at_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 10000 starts what the CPUs the process may use can hold, with one line; the
    loader takes the cap too (the API builds it without the CLI). No process is started here."""
    from densemtl.distributed import Comm
    from densemtl.training import loaders

    monkeypatch.setattr(inert, "max_workers", lambda: 2)
    monkeypatch.setattr(loaders, "max_workers", lambda: 2)
    said: list[str] = []
    cfg = check_settings(resolve_config({"workers": 10000}), {"workers": 10000}, warn=said.append)
    assert cfg.workers == 2
    assert said == [
        "densemtl: warning: --workers 10000 is more loader processes than the 2 CPUs this process may use: "
        "2 are started"
    ]
    assert check_settings(resolve_config({"workers": 2}), {"workers": 2}).workers == 2

    class Data(list):
        def set_epoch(self, epoch: int) -> None:
            pass

    import torch

    cfg = resolve_config({"workers": 10000})
    loader = loaders.epoch_loader(Data(range(8)), cfg, torch.device("cpu"), Comm(), shuffle=True)  # type: ignore[arg-type]
    assert loader.num_workers == 2


def test_max_workers_is_the_affinity() -> None:
    import os

    assert inert.max_workers() == len(os.sched_getaffinity(0))


# -- replanning ------------------------------------------------------------------------------------
def test_replan_plans_as_a_fresh_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--resume --epochs 4 --replan-schedule on the synthetic demo keeps the preset's lr_step 10, as
    a fresh 4-epoch run has it, and prints the plan; on another dataset 2/3 of the epochs."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "4", "--replan-schedule", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "re-planned for 4 epochs: step: x0.5 every 10 epochs (was step: x0.5 every 10 epochs)" in said
    assert yaml.safe_load((run / "config.yaml").read_text())["lr_step"] == resolve_config({"epochs": 4}).lr_step == 10
    from densemtl.training.config import resume_config

    other = tmp_path / "other"
    other.mkdir()
    saved = resolve_config({"dataset": "nyuv2", "epochs": 3}).to_dict()
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resume_config(other, {"epochs": 9}, replan=True).lr_step == 6


# -- torchrun: who prints ----------------------------------------------------------------------------
@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_before_the_ranks_join_rank_0_alone_prints(
    rank: str, printed: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every rank finds the same mistake in the same flags: rank 0 prints it, the others exit with
    the same status quietly (argparse's errors, refused flags, the environment)."""
    from densemtl import launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(launch, "QUIET_WAIT_S", 0.0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--epoch", "3"])
    assert stop.value.code == 2
    assert main(["train", "--momentum", "0.5"]) == 2
    monkeypatch.setenv("DENSEMTL_DIST_TIMEOUT_MIN", "abc")
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("densemtl: error:") == (3 if printed else 0), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_dist_timeout_must_be_minutes(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from densemtl.errors import ConfigError
    from densemtl.launch import timeout_minutes

    monkeypatch.setenv("DENSEMTL_DIST_TIMEOUT_MIN", value)
    with pytest.raises(ConfigError, match="DENSEMTL_DIST_TIMEOUT_MIN must be a number of minutes > 0"):
        timeout_minutes()
    monkeypatch.setenv("DENSEMTL_DIST_TIMEOUT_MIN", "0.5")
    assert timeout_minutes() == 0.5


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--dataset", "synthetic", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")]
    capsys.readouterr()
    assert main([*args, "--batch-size", "100000"]) == 2
    assert capsys.readouterr().err == (
        "densemtl: error: --batch-size 100000 is more than the 4 training images: every epoch would be one batch "
        "of 4 (give --batch-size 4 or less)\n"
    )
    assert not (tmp_path / "r").exists()


def test_a_preset_batch_larger_than_the_split_is_left_alone() -> None:
    inert.check_batch_size(8, 4, {})  # a YAML's or the demo's batch size meeting a small --n-train
    inert.check_batch_size(4, 4, {"batch_size": 4})


@pytest.mark.parametrize("value", ["３２x４０", "3_2x40", "٣٢x40"])
def test_size_takes_ascii_digits_only(value: str) -> None:
    from densemtl.errors import ConfigError
    from densemtl.training.config_parse import parse_size

    with pytest.raises(ConfigError, match="is not a size; write it as HxW"):
        parse_size(value)
    assert parse_size(" 32 x40") == (32, 40)


def test_speed_refuses_an_unknown_method_knob_before_timing() -> None:
    from densemtl.bench.speed_setup import method_spec
    from densemtl.errors import ConfigError

    assert method_spec("famo:update=next_batch") == ("famo", {"update": "next_batch"})
    with pytest.raises(ConfigError, match="--methods 'famo:bogus=1': method 'famo' has no knob 'bogus'; valid: "):
        method_spec("famo:bogus=1")
