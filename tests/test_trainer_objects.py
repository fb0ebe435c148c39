"""Trainer(...) with objects instead of names: one's own model, datasets, method and optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from densemtl.balancing import create as create_method
from densemtl.errors import ConfigError
from densemtl.training.builders import build_datasets, build_method, build_model
from densemtl.training.checkpoint import load_checkpoint
from densemtl.training.config import TrainConfig
from densemtl.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("no_plots")

TINY: dict[str, Any] = {
    "size": (32, 40), "n_train": 8, "n_val": 4, "batch_size": 4, "epochs": 2,
    "arch_args": {"width": 0.125, "depth_stages": 3},
}  # fmt: skip


def quiet(**kw: Any) -> dict[str, Any]:
    return {"progress": False, "log": lambda s: None, **kw}


def test_objects_equal_to_the_config_give_the_same_run(tmp_path: Path) -> None:
    cfg = TrainConfig(method="pcgrad", **TINY)
    by_name = Trainer(cfg, tmp_path / "names", **quiet()).run()
    train, val = build_datasets(cfg)
    model = build_model(cfg, train.tasks, train.num_classes)
    method = build_method("pcgrad", len(train.tasks), cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step or 10**9, gamma=cfg.lr_gamma)
    t = Trainer(
        TrainConfig(**TINY), tmp_path / "objects", model=model, train_data=train, val_data=val, method=method,
        optimizer=opt, scheduler=sched, **quiet(),
    )  # fmt: skip
    by_objects = t.run()
    assert t.cfg.method == "pcgrad"  # a registered class is named in config.yaml
    assert by_objects["metrics"] == by_name["metrics"]
    objects = load_checkpoint(tmp_path / "objects" / "checkpoints" / "last.pt")["objects"]
    assert objects["method"].endswith("PCGrad") and objects["optimizer"] == "torch.optim.adam.Adam"
    assert "model" not in objects  # the config's own architecture: eval and load_run rebuild it


def test_a_method_name_and_an_optimizer_factory(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY)
    made: list[Any] = []

    def sgd(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        made.append(groups)
        return torch.optim.SGD(groups, lr=0.01, momentum=0.9)

    t = Trainer(cfg, tmp_path / "run", method="uw", optimizer=sgd, **quiet())
    t.run()
    assert t.cfg.method == "uw"
    assert len(made[0]) == 2  # the model's parameters and UW's own log-variances
    assert isinstance(t.members[0].optimizer, torch.optim.SGD)
    assert t.members[0].optimizer.param_groups[0]["lr"] == 0.01  # constant without a scheduler
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_the_defaults_are_the_demo_and_a_fresh_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    t = Trainer(**quiet())
    assert t.cfg == TrainConfig() and t.cfg.size == (64, 80) and t.cfg.n_train == 320
    assert t.out.parent == Path("runs") and t.out.name.endswith("-synthetic-segnet-ew")
    assert sum(p.numel() for p in t.model.parameters()) == 682_395  # what the README says the demo has
    assert not t.out.exists()  # nothing is written before run()


def own_model(tasks: tuple[str, ...], classes: int) -> Any:
    from densemtl.models.base import MultiTaskModel

    class Net(MultiTaskModel):
        def __init__(self) -> None:
            super().__init__({"seg": classes, "depth": 1, "normal": 3})
            self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.heads = nn.ModuleDict({t: nn.Conv2d(8, c, 1) for t, c in self.task_channels.items()})

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return self.trunk(x)

        def decode(self, rep: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
            return {t: self.heads[t](rep) for t in self.tasks}

    return Net()


def test_ones_own_model_trains_resumes_and_is_refused_by_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    train, val = build_datasets(cfg)
    torch.manual_seed(0)
    model = own_model(train.tasks, train.num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    out = tmp_path / "run"
    method = create_method("nashmtl")
    Trainer(cfg, out, model=model, train_data=train, val_data=val, method=method, **quiet()).run()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    longer = TrainConfig(**{**TINY, "epochs": 2})
    again = Trainer(longer, out, model=model, train_data=train, val_data=val, method=method, resume=True, **quiet())
    assert again.epoch == 1
    summary = again.run()
    assert summary["arch"] == summary["objects"]["model"] and summary["arch"].endswith("Net")
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [0, 1, 2]
    from densemtl.cli.main import main

    assert main(["eval", "--checkpoint", str(out)]) == 2
    assert "given as a Python object" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": nn.Linear(2, 2)}, "not a densemtl MultiTaskModel"),
        ({"train_data": [1, 2]}, "give both train_data and val_data"),
        ({"train_data": [1], "val_data": [2]}, "not a multi-task dataset"),
        ({"method": 3}, "expected a method name or a BalancingMethod"),
        ({"method": "nope"}, "nope"),
        ({"optimizer": 0.1}, "expected a torch optimizer"),
        ({"scheduler": lambda o: o}, "give optimizer=... too"),
    ],
)
def test_bad_objects_are_one_line(tmp_path: Path, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        Trainer(TrainConfig(**TINY), tmp_path / "run", **kwargs, **quiet())
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_model_for_other_tasks_and_objects_under_mutual_learning(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, tasks=["seg", "depth"])
    train, val = build_datasets(TrainConfig(**TINY))
    with pytest.raises(ConfigError, match="the model predicts"):
        Trainer(cfg, tmp_path / "a", model=build_model(TrainConfig(**TINY), train.tasks, 13), **quiet())
    mdml = TrainConfig(**TINY, peer_arch="segnet")
    with pytest.raises(ConfigError, match="2 networks"):
        Trainer(mdml, tmp_path / "b", method=create_method("ew"), **quiet())
