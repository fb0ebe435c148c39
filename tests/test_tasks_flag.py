"""``--tasks`` trains a subset of the dataset's tasks: heads, losses, metrics and baselines follow it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from densemtl.bench.grid import resolve_grid
from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.training.checkpoint import load_checkpoint
from densemtl.training.config import resolve_config


def test_a_subset_trains_and_is_recorded(tmp_path: Path, tiny_args: list[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *tiny_args, "--tasks", "depth,seg", "--out", str(out)]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert list(last["val"]) == ["depth", "seg"] and list(last["train_loss"]) == ["depth", "seg"]
    state = load_checkpoint(out)
    assert state["tasks"] == ["depth", "seg"] and not any(k.startswith("heads.normal") for k in state["model"])
    assert main(["eval", "--checkpoint", str(out)]) == 0


def test_synthetic_scenes_render_the_tasks_asked_for(tmp_path: Path, tiny_args: list[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *tiny_args, "--tasks", "seg,edge", "--out", str(out)]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert list(last["val"]) == ["seg", "edge"] and "ods_f" in last["val"]["edge"]


def test_a_dataset_without_the_task_names_what_it_has(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    assert main(["data", "synth", "--out", str(data), "--n-train", "2", "--n-val", "1", "--size", "32x40"]) == 0
    args = ["train", "--dataset", "nyuv2", "--data-root", str(data), "--tasks", "depth,edge", "--epochs", "0"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "dataset 'nyuv2' has no task edge; it has seg, depth, normal" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("seg,parts", "unknown task 'parts'"),
        ("seg,seg", "names seg more than once"),
        (",", "must name at least one task"),
    ],
)
def test_bad_subsets_are_one_line(
    value: str, message: str, tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["train", *tiny_args, "--tasks", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_yaml_list_and_bench_baseline_key() -> None:
    assert resolve_config({"tasks": ["seg", "normal"]}).tasks == ["seg", "normal"]
    with pytest.raises(ConfigError, match="comma-separated list"):
        resolve_config({"tasks": 3})
    both, some = resolve_grid({}), resolve_grid({"tasks": "seg,depth"})
    assert both.base.get("tasks") is None and some.base["tasks"] in ("seg,depth", ["seg", "depth"])
    assert both.baseline_key("segnet") != some.baseline_key("segnet")
