"""One configured TaskSet per run: ``--task-arg`` and a dataset's ``task_args`` reach the training
loss and the metrics alike, every knob of every task does what it claims, a bad knob is one line,
and nothing outside the TaskSet builds a task."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from densemtl import data, tasks
from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.metrics import StreamingMetrics, evaluate
from densemtl.tasks import TaskSet, task_knobs
from densemtl.training.builders import build_model, build_task_set
from densemtl.training.config import TrainConfig
from densemtl.training.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src" / "densemtl"
SMALL = {"width": 0.125, "depth_stages": 3}
TINY = ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--epochs", "1", "--quiet"]
TINY += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3", "--diagnostics-every", "0"]
EDGE = ["--data-arg", "tasks=seg,edge"]


def tiny_config(**over: Any) -> TrainConfig:
    """A tiny run on synthetic scenes with edges (seg and edge)."""
    kw: dict[str, Any] = {"size": (32, 40), "n_train": 4, "n_val": 2, "batch_size": 2, "epochs": 1}
    kw.update(data_args={"tasks": "seg,edge"}, arch_args=dict(SMALL), diagnostics_every=0)
    return TrainConfig(**{**kw, **over})


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, w: float) -> torch.Tensor:
    """MTI-Net's form of the edge loss, written independently of densemtl: (1 − w) × BCE with
    ``pos_weight = w / (1 − w)``, averaged over the pixels labelled 0 or 1."""
    valid = (target >= 0) & (target <= 1)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits.double(), target.clamp(0, 1).double(), pos_weight=torch.tensor(w / (1 - w)), reduction="none"
    )
    return (1 - w) * per_pixel[valid].mean()


# -- the run: --task-arg reaches the training loss ------------------------------------------------
@pytest.mark.parametrize("w", [0.5, 0.95])
def test_the_engine_trains_on_the_edge_loss_of_the_runs_pos_weight(w: float, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(task_args={"edge": {"pos_weight": w}}), tmp_path / "run", progress=False)
    assert trainer.members[0].engine.task_set is trainer.task_set  # built once, passed down
    batch = default_collate([trainer.train_set[i] for i in range(2)])
    model = trainer.model
    with torch.no_grad():
        preds = model(batch["image"])
        losses = trainer.members[0].engine.task_losses(preds, batch)  # what a step balances
    assert losses[trainer.tasks.index("edge")].item() == pytest.approx(
        balanced_bce(preds["edge"], batch["edge"], w).item(), rel=1e-5
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Two tiny CLI runs that differ only in ``--task-arg edge:pos_weight``."""
    root = tmp_path_factory.mktemp("taskset")
    out = {}
    for w in (0.5, 0.95):
        out[w] = root / f"w{w}"
        assert main(["train", *TINY, *EDGE, "--task-arg", f"edge:pos_weight={w}", "--out", str(out[w])]) == 0
    return out


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_task_arg_pos_weight_changes_the_edge_training_loss_and_its_metric_only(runs: dict[float, Path]) -> None:
    half, usual = records(runs[0.5]), records(runs[0.95])
    # epoch 0 (the same initial network): the logged edge loss differs, the F-measures do not
    assert half[0]["val"]["edge"]["loss"] != usual[0]["val"]["edge"]["loss"]
    for metric in ("ods_f", "ois_f"):
        assert half[0]["val"]["edge"][metric] == usual[0]["val"]["edge"][metric]
    assert half[0]["val"]["seg"] == usual[0]["val"]["seg"]
    # epoch 1: the edge training loss the method balanced
    assert half[1]["train_loss"]["edge"] != pytest.approx(usual[1]["train_loss"]["edge"], rel=1e-3)
    assert (
        "edge" in (runs[0.5] / "config.yaml").read_text()
        and "pos_weight: 0.5" in (runs[0.5] / "config.yaml").read_text()
    )


def test_eval_scores_a_run_with_the_knobs_it_was_trained_with(runs: dict[float, Path], tmp_path: Path) -> None:
    for w, run in runs.items():
        out = tmp_path / f"eval{w}.json"
        assert main(["eval", "--checkpoint", str(run), "--json", str(out)]) == 0
        metrics = json.loads(out.read_text())["metrics"]
        selected = records(run)[-1]["val"]  # one epoch: best.pt holds epoch 1
        assert metrics["edge"]["loss"] == pytest.approx(selected["edge"]["loss"], rel=1e-6)


def test_a_datasets_task_args_are_the_defaults_and_the_runs_knobs_win(tmp_path: Path) -> None:
    train = data.create("synthetic", "train", n=2, size=(32, 40), tasks="seg,edge")
    val = data.create("synthetic", "val", n=2, size=(32, 40), tasks="seg,edge")
    for ds in (train, val):
        ds.task_args = {"edge": {"pos_weight": 0.6, "max_dist": 0.02}, "saliency": {"nope": 1}}  # type: ignore[attr-defined]
    cfg = tiny_config(task_args={"edge": {"pos_weight": 0.7}})
    trainer = Trainer(cfg, tmp_path / "run", train_data=train, val_data=val, progress=False)
    edge = trainer.task_set["edge"]
    assert (edge.pos_weight, edge.max_dist) == (0.7, 0.02)  # type: ignore[attr-defined]
    assert trainer.task_set.knobs == {"seg": {}, "edge": {"pos_weight": 0.7, "max_dist": 0.02}}
    assert trainer.members[0].engine.task_set is trainer.task_set


def test_a_knob_that_sizes_a_head_reaches_the_model() -> None:
    cfg = tiny_config(task_args={"parts": {"num_parts": 3}})
    model = build_model(cfg, build_task_set(cfg, ("seg", "parts")), 7)
    assert model.task_channels == {"seg": 7, "parts": 4}


# -- every knob of every task: it changes what it claims, and only that ---------------------------
H, W = 64, 80


def edge_inputs(task_set: TaskSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth: three vertical edges (col 20, 40, 70), an ignored row. Prediction: col 40
    found; col 70 found 2 px off (matched only with a wider tolerance); a less sure false edge at
    col 60 (left out only by a fine threshold grid); a thick ridge around col 20 that peaks 2 px
    off (thinning finds col 20, non-maximum suppression keeps col 18)."""
    target = torch.zeros(1, 1, H, W)
    prob = torch.full((1, 1, H, W), 0.02)
    for col in (20, 40, 70):
        target[0, 0, 8:56, col] = 1
    target[0, 0, 0, :] = -1
    prob[0, 0, 8:56, 40] = 0.9
    prob[0, 0, 8:56, 72] = 0.99
    prob[0, 0, 8:56, 60] = 0.8
    for i, p in enumerate((0.95, 0.93, 0.91, 0.89, 0.87)):
        prob[0, 0, 8:56, 18 + i] = p
    return torch.logit(prob), target


def parts_inputs(task_set: TaskSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images with a person, labels 0 … 3 predicted exactly by the set's head."""
    target = torch.arange(H * W).reshape(1, H, W).repeat(2, 1, 1) % 4
    channels = task_set.channels(21)["parts"]
    return 4.0 * F.one_hot(target, channels).permute(0, 3, 1, 2).float(), target


#: Per task with knobs: its inputs (prediction, target) from the configured set.
INPUTS = {"edge": edge_inputs, "parts": parts_inputs}
#: Per knob: a changed value and what it changes: "channels" (the head), "loss" (the training
#: loss) and metric names; everything else must stay as it was.
CLAIMS: dict[tuple[str, str], tuple[Any, set[str]]] = {
    ("edge", "pos_weight"): (0.5, {"loss", "metric:loss"}),
    ("edge", "max_dist"): (0.04, {"metric:ods_f", "metric:ois_f"}),
    ("edge", "thresholds"): (3, {"metric:ods_f", "metric:ois_f"}),
    ("edge", "nms"): (True, {"metric:ods_f", "metric:ois_f"}),
    ("parts", "num_parts"): (3, {"channels", "loss", "metric:miou"}),
}
KNOBS = [(name, knob) for name in tasks.available() for knob in task_knobs(name)]


def effects(task_set: TaskSet, name: str) -> dict[str, float]:
    """The head's channels, the training loss (as a run computes it) and every metric."""
    pred, target = INPUTS[name](task_set)
    out = {"channels": float(task_set.channels(21)[name])}
    out["loss"] = float(task_set.losses({name: pred}, {name: target})[name])
    meter = StreamingMetrics(task_set, 21)
    meter.update({name: pred}, {name: target})
    out.update({f"metric:{k}": v for k, v in meter.compute()[name].items()})
    return out


@pytest.mark.parametrize(("name", "knob"), KNOBS, ids=[f"{n}.{k}" for n, k in KNOBS])
def test_each_knob_changes_what_it_claims_and_nothing_else(name: str, knob: str) -> None:
    if (name, knob) not in CLAIMS or name not in INPUTS:
        pytest.fail(f"task {name!r} knob {knob!r}: declare in CLAIMS what it changes (and INPUTS for the task)")
    value, claimed = CLAIMS[(name, knob)]
    assert value != task_knobs(name)[knob]
    before = effects(TaskSet([name]), name)
    after = effects(TaskSet([name], {name: {knob: value}}), name)
    changed = {k for k in before if before[k] != pytest.approx(after[k], rel=1e-9, abs=1e-12)}
    assert changed == claimed


def test_the_metrics_of_evaluate_follow_a_given_task_set() -> None:
    pred, target = edge_inputs(TaskSet(["edge"]))
    usual = evaluate({"edge": pred}, {"edge": target, "image": target}, 1)
    wide = evaluate({"edge": pred}, {"edge": target}, 1, TaskSet(["seg", "edge"], {"edge": {"max_dist": 0.04}}))
    assert usual["edge"]["ods_f"] < 0.9 < wide["edge"]["ods_f"]


# -- a bad knob: one line naming it ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("task_args", "defaults", "message"),
    [
        (
            {"edg": {"pos_weight": 0.5}},
            None,
            "--task-arg edg:pos_weight=0.5: this run has no task 'edg' (did you mean 'edge'?); its tasks: seg, edge",
        ),  # fmt: skip
        ({"depth": {"x": 1}}, None, "--task-arg depth:x=1: this run has no task 'depth'; its tasks: seg, edge"),
        (
            {"edge": {"max_dits": 0.1}},
            None,
            "--task-arg edge:max_dits: task 'edge' has no knob 'max_dits' (did you "
            "mean 'max_dist'?); its knobs: pos_weight=0.95, max_dist=0.0075, thresholds=99, nms=False",
        ),  # fmt: skip
        ({"seg": {"weight": 2.0}}, None, "--task-arg seg:weight: task 'seg' has no knob 'weight'; its knobs: none"),
        (
            {"edge": {"thresholds": 2.5}},
            None,
            "--task-arg edge:thresholds: task 'edge' knob 'thresholds' must be a int (default 99), got 2.5",
        ),  # fmt: skip
        ({"edge": {"pos_weight": 0}}, None, "--task-arg edge:pos_weight=0: edge: pos_weight must be in (0, 1), got 0"),
        (
            None,
            {"edge": {"max_dist": -1.0}},
            "the dataset's task_args edge:max_dist: edge: max_dist must be > 0 (a "
            "fraction of the image diagonal), got -1.0",
        ),  # fmt: skip
        (
            None,
            {"edge": {"tolerance": 1}},
            "the dataset's task_args edge:tolerance: task 'edge' has no knob "
            "'tolerance'; its knobs: pos_weight=0.95, max_dist=0.0075, thresholds=99, nms=False",
        ),  # fmt: skip
    ],
)
def test_a_bad_knob_is_one_line_naming_it(task_args: Any, defaults: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TaskSet(["seg", "edge"], task_args, defaults=defaults)
    assert str(info.value) == message


def test_a_bad_task_arg_stops_a_run_before_it_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, *EDGE, "--task-arg", "edge:pos_weight=2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "densemtl: error: --task-arg edge:pos_weight=2: edge: pos_weight must be in (0, 1), got 2\n"
    assert not out.exists()


def test_a_task_set_is_an_ordered_immutable_mapping() -> None:
    ts = TaskSet(["edge", "seg"], {"edge": {"nms": True}})
    assert list(ts) == ["edge", "seg"] == list(ts.names) and len(ts) == 2 and "seg" in ts
    assert ts.knobs == {"edge": {"nms": True}, "seg": {}}
    assert ts.subset(["seg"]).names == ("seg",) and ts.subset(["edge"])["edge"] is ts["edge"]
    with pytest.raises(TypeError):
        ts["depth"] = tasks.create("depth")  # type: ignore[index]
    with pytest.raises(ConfigError, match="not in the task set; its tasks: edge, seg"):
        ts.subset(["depth"])
    assert repr(ts) == "TaskSet(edge(nms=True), seg)"


def test_list_shows_every_task_with_its_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  edge +pos_weight=0\.95, max_dist=0\.0075, thresholds=99, nms=False$", out, re.M)
    assert re.search(r"^  parts +num_parts=6$", out, re.M)
    for name in tasks.available():
        assert re.search(rf"^  {name} ", out, re.M)


# -- nothing outside the TaskSet builds a task ----------------------------------------------------
#: How code builds a task instance by name, bypassing the TaskSet.
BUILDS = re.compile(
    r"\btasks\.get\(|\btask_registry\.get\(|\bTASKS\.create\(|call_factory\(\s*\"task\"|\bTASKS\.get\([^)]*\)\("
)


def test_no_task_is_built_outside_the_task_set() -> None:
    own = SRC / "tasks" / "taskset.py"
    classes = {type(tasks.create(n)).__name__ for n in tasks.available()}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == own:
            continue
        text = path.read_text()
        # a task class imported from its module (outside tasks/, which defines and subclasses them)
        imported = set() if path.parent == SRC / "tasks" else {
            name.strip().split(" as ")[-1]
            for names in re.findall(r"from densemtl\.tasks\.\w+ import ([\w, ]+)", text)
            for name in names.split(",")
            if name.strip().split(" as ")[0] in classes
        }  # fmt: skip
        direct = re.compile(rf"(?<![\w.])({'|'.join(sorted(imported))})\(") if imported else None
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if BUILDS.search(code) or (direct is not None and direct.search(code) and "class " not in code):
                found.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert found == []


def test_two_argument_extra_losses_still_added() -> None:
    """A model written for 0.5 overrides ``extra_losses(preds, batch)``: its extra loss is still added."""
    import torch

    from densemtl.models.base import MultiTaskModel

    class Old(MultiTaskModel):
        has_representation = False

        def __init__(self) -> None:
            super().__init__({"depth": 1})
            self.heads = torch.nn.ModuleDict({"depth": torch.nn.Conv2d(3, 1, 1)})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"depth": self.heads["depth"](x)}

        def extra_losses(self, preds, batch):  # type: ignore[override]
            return {"depth": torch.tensor(1.5)}

    torch.manual_seed(0)
    m, x = Old(), torch.rand(1, 3, 16, 16)
    batch = {"image": x, "depth": torch.rand(1, 1, 16, 16) + 0.1}
    preds = m(x)
    plain = MultiTaskModel.task_losses.__get__(m)  # the same call; the difference is the extra loss alone
    base = densemtl_base_loss(preds, batch)
    assert torch.allclose(plain(preds, batch)["depth"], base + 1.5)


def densemtl_base_loss(preds, batch):
    from densemtl.tasks import TaskSet

    return TaskSet(["depth"], {}).losses(preds, batch)["depth"]
