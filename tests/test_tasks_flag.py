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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("seg,edge", "dataset 'synthetic' has no task edge; it has seg, depth, normal"),
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
