"""The learning-rate schedule and optimizer a config names (defaults unchanged: Adam, StepLR at 2/3
of the epochs), what resuming does to the schedule, the dropped batch of one image, a crash's run
directory, and the warning about a task with no valid pixels."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from densemtl.cli.main import main
from densemtl.data.base import tasks_without_valid_pixels
from densemtl.distributed import Comm
from densemtl.errors import ConfigError
from densemtl.training.builders import build_datasets, build_method, build_model, build_optimizer
from densemtl.training.checkpoint import load_checkpoint, save_checkpoint
from densemtl.training.config import TrainConfig, resolve_config
from densemtl.training.loaders import dropped_samples, epoch_loader, start_notes
from densemtl.training.rundir import check_out_dir
from densemtl.training.schedule import POLY_POWER, lr_factor
from densemtl.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("no_plots")

TINY: dict[str, Any] = {
    "size": (32, 40),
    "n_train": 8,
    "n_val": 4,
    "batch_size": 4,
    "arch_args": {"width": 0.125, "depth_stages": 3},
    "diagnostics_every": 0,
}
TINY_CLI = ["--size", "32x40", "--n-train", "8", "--n-val", "4", "--batch-size", "4"]
TINY_CLI += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--diagnostics-every", "0", "--quiet"]


def lrs(cfg: TrainConfig, epochs: int) -> list[float]:
    """The learning rate of each epoch under ``cfg``'s optimizer and scheduler, stepped per epoch."""
    model = build_model(cfg, ("seg", "depth"), 3)
    opt, sched = build_optimizer(cfg, model, build_method(cfg.method, 2, cfg.seed))
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- the defaults ---------------------------------------------------------------------------------
def test_lr_step_resolved_into_config() -> None:
    assert TrainConfig().lr_step == 10 and TrainConfig().schedule_epochs == 15  # the demo: 2/3 of 15
    assert resolve_config({"dataset": "nyuv2", "epochs": 30}).lr_step == 20  # 2/3 of the epochs
    assert resolve_config({"dataset": "nyuv2", "epochs": 1}).lr_step == 1
    assert resolve_config({"dataset": "nyuv2", "lr_step": "auto", "epochs": 12}).lr_step == 8
    assert resolve_config({"epochs": 3, "lr_step": 2}).lr_step == 2
    assert TrainConfig(lr_step=None).lr_step is None  # runs before 0.4: never decays


def test_default_optimizer_and_schedule_are_todays_bit_for_bit() -> None:
    """Adam + StepLR(lr_step, lr_gamma), as built before the choices existed: equal parameters after
    steps across a decay."""
    cfg = resolve_config({**TINY, "lr_step": 2, "weight_decay": 1e-4})
    torch.manual_seed(0)
    a, b = build_model(cfg, ("seg",), 3), build_model(cfg, ("seg",), 3)
    opt_a, sched_a = build_optimizer(cfg, a, build_method("ew", 1, 0))
    opt_b = torch.optim.Adam([{"params": list(b.parameters())}], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    assert type(opt_a) is torch.optim.Adam and type(sched_a) is torch.optim.lr_scheduler.StepLR
    x = torch.rand(2, 3, 32, 40)
    for _ in range(5):
        for model, opt, sched in ((a, opt_a, sched_a), (b, opt_b, sched_b)):
            opt.zero_grad()
            model(x)["seg"].square().mean().backward()
            opt.step()
            sched.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"] == cfg.lr / 4


# -- schedules against their closed forms ------------------------------------------------------------
def test_cosine_is_cosine_annealing() -> None:
    cfg = TrainConfig(**TINY, epochs=7, lr_schedule="cosine")
    got = lrs(cfg, 7)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    want = []
    for _ in range(7):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got == pytest.approx([cfg.lr * (1 + math.cos(math.pi * e / 7)) / 2 for e in range(7)])


def test_poly_is_deeplab_per_epoch() -> None:
    cfg = TrainConfig(**TINY, epochs=6, lr_schedule="poly")
    want = [cfg.lr * (1 - e / 6) ** 0.9 for e in range(6)]
    assert POLY_POWER == 0.9 and lrs(cfg, 6) == pytest.approx(want, rel=1e-12)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=6, power=0.9)
    torch_lrs = []
    for _ in range(6):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert want == pytest.approx(torch_lrs, rel=1e-9)
    assert lr_factor(cfg)(6) == lr_factor(cfg)(9) == 0.0  # past the planned epochs: zero


def test_warmup_and_constant() -> None:
    cfg = TrainConfig(**TINY, epochs=8, lr_step=4, warmup_epochs=3)
    want = [cfg.lr * 0.5 ** (e // 4) * ((e + 1) / 4 if e < 3 else 1) for e in range(8)]
    assert lrs(cfg, 8) == pytest.approx(want, rel=1e-12)
    assert lrs(TrainConfig(**TINY, epochs=5, lr_schedule="none"), 5) == [TrainConfig().lr] * 5


def test_optimizers() -> None:
    model = build_model(TrainConfig(**TINY), ("seg",), 3)
    opt, _ = build_optimizer(TrainConfig(**TINY, optimizer="adamw", weight_decay=0.01), model, build_method("ew", 1, 0))
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01
    opt, _ = build_optimizer(TrainConfig(**TINY, optimizer="sgd", momentum=0.8), model, build_method("ew", 1, 0))
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["momentum"] == 0.8
    with pytest.raises(ConfigError, match="--optimizer sgd: mao chooses its own"):
        build_optimizer(TrainConfig(**TINY, method="mao", optimizer="sgd"), model, build_method("mao", 1, 0))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of adam, adamw, sgd, got 'rmsprop'"),
        ({"lr_schedule": "exp"}, "lr_schedule must be one of step, cosine, poly, none, got 'exp'"),
        ({"momentum": 1.0}, "momentum must be >= 0 and < 1, got 1.0"),
        ({"warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"),
    ],
)
def test_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        resolve_config(values)


# -- resuming ------------------------------------------------------------------------------------------
def test_resume_keeps_or_replans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY_CLI, "--epochs", "2", "--lr-schedule", "cosine", "--out", str(run)]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["lr_schedule"], cfg["schedule_epochs"], cfg["lr_step"], cfg["optimizer"]) == ("cosine", 2, 10, "adam")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "schedule is kept as planned: cosine to 0 over 2 epochs; epochs 2..2 train at a rate of 0" in said
    assert "--replan-schedule plans it for 3 epochs" in said
    assert [r["lr"] for r in records(run)][1:] == pytest.approx([2e-3, 1e-3, 0.0])
    assert main(["train", "--resume", "--out", str(run), "--epochs", "5", "--replan-schedule", "--quiet"]) == 0
    assert (
        "re-planned for 5 epochs: cosine to 0 over 5 epochs (was cosine to 0 over 2 epochs)" in capsys.readouterr().out
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule_epochs"] == 5
    cosine = [2e-3 * (1 + math.cos(math.pi * e / 5)) / 2 for e in (3, 4)]  # epochs 4, 5 of the 5-epoch plan
    assert [r["lr"] for r in records(run)][4:] == pytest.approx(cosine)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "6", "--lr-step", "2"]) == 2
    assert "cannot change 'lr_step'" in capsys.readouterr().err
    assert main(["train", "--replan-schedule", "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err == (
        "densemtl: error: --replan-schedule applies to --resume only; a fresh run plans its schedule for its --epochs\n"
    )
    assert not (tmp_path / "other").exists()


def test_step_replan_takes_over_saved_scheduler(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(resolve_config({**TINY, "epochs": 2, "lr_step": 1}), run, progress=False, log=lambda _: None).run()
    cfg = resolve_config({**TINY, "epochs": 4, "lr_step": 3, "schedule_epochs": 4})
    t = Trainer(cfg, run, resume=True, progress=False, log=lambda _: None)
    assert t.members[0].scheduler.step_size == 3  # type: ignore[attr-defined]
    t.run()
    assert [r["lr"] for r in records(run)][1:] == pytest.approx([2e-3, 1e-3, 2e-3, 1e-3])


def test_old_run_without_the_new_keys_resumes(tmp_path: Path) -> None:
    """A run saved before the optimizer, schedule and imports keys: its config.yaml and checkpoint
    have none of them (and lr_step null); it resumes on a constant rate, as it ran."""
    run = tmp_path / "run"
    Trainer(resolve_config({**TINY, "epochs": 1}), run, progress=False, log=lambda _: None).run()
    new = ("lr_schedule", "schedule_epochs", "warmup_epochs", "optimizer", "momentum", "imports")
    old = {k: v for k, v in yaml.safe_load((run / "config.yaml").read_text()).items() if k not in new}
    old["lr_step"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["config"] = old
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    assert [r["lr"] for r in records(run)][1:] == [2e-3] * 2


# -- a batch of one image ----------------------------------------------------------------------------
def test_batch_of_one_is_dropped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--size", "64x64", "--n-train", "5", "--n-val", "2", "--batch-size", "4", "--epochs", "1", "--quiet"]
    args += ["--arch", "hps", "--arch-arg", "backbone=resnet18", "--arch-arg", "head_channels=16"]
    assert main(["train", *args, "--out", str(tmp_path / "hps")]) == 0
    assert "the last batch of each epoch (1 image) is left out" in capsys.readouterr().out


class Items(list):  # type: ignore[type-arg]
    """Sample indices as a dataset (the loader's order is all these tests look at)."""

    def set_epoch(self, epoch: int) -> None:
        pass


def test_dropped_samples_rule() -> None:
    cfg = TrainConfig(**{**TINY, "batch_size": 4})
    one, two = Comm(), Comm(world_size=2)
    assert [dropped_samples(n, cfg, one) for n in (4, 5, 6, 8, 9, 1)] == [0, 1, 0, 0, 1, 0]
    assert [dropped_samples(n, cfg, two) for n in (5, 6, 7)] == [1, 0, 0]  # global batches as one process
    no_sync = TrainConfig(**{**TINY, "batch_size": 4, "sync_bn": False})
    assert [dropped_samples(n, no_sync, two) for n in (6, 7)] == [2, 3]  # a process would get one image
    assert len(epoch_loader(Items(range(5)), cfg, torch.device("cpu"), one, shuffle=True)) == 1  # type: ignore[arg-type]


def test_sharded_batches_equal_one_process_with_the_drop() -> None:
    data = Items(range(9))
    cfg = TrainConfig(**{**TINY, "batch_size": 4})
    cpu = torch.device("cpu")
    single = [b.tolist() for b in epoch_loader(data, cfg, cpu, Comm(), shuffle=True)]  # type: ignore[arg-type]
    ranks = [list(epoch_loader(data, cfg, cpu, Comm(world_size=2, rank=r), shuffle=True)) for r in (0, 1)]  # type: ignore[arg-type]
    assert [a.tolist() + b.tolist() for a, b in zip(*ranks, strict=True)] == single and len(single) == 2


# -- a crash's run directory --------------------------------------------------------------------------
def crash_at(t: Trainer, step: int) -> None:
    inner, done = t.train_batch, [0]

    def failing(epoch: int, batch: Any) -> Any:
        done[0] += 1
        if done[0] == step:
            raise RuntimeError("boom")
        return inner(epoch, batch)

    t.train_batch = failing  # type: ignore[method-assign]


def test_crash_before_a_checkpoint_leaves_nothing_and_after_one_resumes(tmp_path: Path) -> None:
    run, cfg = tmp_path / "run", resolve_config({**TINY, "epochs": 2})
    t = Trainer(cfg, run, progress=False, log=lambda _: None)
    crash_at(t, 1)
    with pytest.raises(RuntimeError, match="boom"):
        t.run()
    assert not run.exists()
    t = Trainer(cfg, run, progress=False, log=lambda _: None)  # the same --out again
    crash_at(t, 3)  # epoch 2's first step, after epoch 1's checkpoint
    with pytest.raises(RuntimeError, match="boom"):
        t.run()
    assert (run / "checkpoints" / "last.pt").is_file()
    with pytest.raises(ConfigError, match="already holds a run"):
        check_out_dir(run)
    Trainer(cfg, run, resume=True, progress=False, log=lambda _: None).run()
    assert [r["epoch"] for r in records(run)] == [0, 1, 2]


def test_directory_of_a_run_killed_at_birth_is_replaceable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml.host.123.tmp").write_text("dataset: syn")
    check_out_dir(run)  # no error: nothing of a run is there
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run or other files"):
        check_out_dir(run)


# -- a task with no valid pixels ---------------------------------------------------------------------
class NoDepth:
    """A dataset whose depth targets are all 0 (invalid), like Cityscapes frames without disparity."""

    def __init__(self, base: Any) -> None:
        self.base, self.tasks, self.num_classes, self.size = base, base.tasks, base.num_classes, base.size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = dict(self.base[i])
        sample["depth"] = torch.zeros_like(sample["depth"])
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)


def test_task_without_valid_pixels_is_named() -> None:
    cfg = TrainConfig(**TINY)
    train, val = build_datasets(cfg)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)  # type: ignore[func-returns-value]
    assert tasks_without_valid_pixels(NoDepth(val)) == ["depth"] and tasks_without_valid_pixels(train) == []  # type: ignore[arg-type]
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == pytest.approx(
        (
            torch.manual_seed(5) and torch.rand(1).item(),
            np.random.seed(5) or np.random.rand(),
            random.seed(5) or random.random(),
        )
    )  # the scan took nothing from the random generators
    notes = start_notes(train, NoDepth(val), cfg, Comm())  # type: ignore[arg-type]
    assert notes == [
        "densemtl: warning: task 'depth' has no valid pixel in the val split (in the samples read); "
        "its metrics will be null"
    ]
    assert start_notes(train, NoDepth(val), cfg, Comm(world_size=2, rank=1)) == []  # type: ignore[arg-type]


def test_split_optimizer_follows_its_scheduler_after_loading() -> None:
    """MAO's OptimizerGroup: after load_state_dict (a resume) its scheduler still sets every member's rate."""
    from densemtl.training.builders import OptimizerGroup

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    group = OptimizerGroup({"s": torch.optim.SGD(a.parameters(), lr=1.0), "t": torch.optim.AdamW(b.parameters())})
    saved = group.state_dict()
    group = OptimizerGroup({"s": torch.optim.SGD(a.parameters(), lr=1.0), "t": torch.optim.AdamW(b.parameters())})
    sched = torch.optim.lr_scheduler.StepLR(group, step_size=1, gamma=0.5)
    group.load_state_dict(saved)
    group.step()
    sched.step()
    assert [g["lr"] for opt in group.optimizers.values() for g in opt.param_groups] == [0.5, 0.0005]
