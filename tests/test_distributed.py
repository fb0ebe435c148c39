"""Training across processes (gloo on the CPU): one global batch, sharded, gives the step one
process takes on the whole of it; every method keeps the ranks in sync; torchrun runs the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import ddp_workers as W
from densemtl.balancing import METHODS
from densemtl.distributed import Comm, ShardedBatches, spawn
from densemtl.errors import RuntimeFault
from densemtl.training.resumable import EpochOrder

#: (method, mode) pairs of the issue's equality test, every mode each method offers of the two
CASES = [
    ("ew", None),
    ("famo", None),
    ("pcgrad", "representation"),
    ("pcgrad", "parameters"),
    ("cagrad", "representation"),
    ("cagrad", "parameters"),
    ("cagrad", "gramian"),
    ("acg", "representation"),
    ("acg", "parameters"),
    ("mao", "parameters"),
    ("nashmtl", "representation"),
    ("nashmtl", "parameters"),
    ("gradnorm", None),
    ("uw", None),
]


def _cases(comm: Comm, cases: list[tuple[str, str | None]], bn: bool, sizes: list[int] | None) -> list[Any]:
    return [W.train_steps(comm, m, mode, 3, sizes, bn) for m, mode in cases]


#: the cases of the uneven shards (5 + 3 samples)
UNEVEN = [("ew", None), ("pcgrad", "representation"), ("nashmtl", "parameters"), ("mao", "parameters")]
#: every group of cases the 2 ranks run, in one spawn: (cases, batch norm, shard sizes)
GROUPS: dict[str, tuple[list[tuple[str, str | None]], bool, list[int] | None]] = {
    "no-bn": (CASES, False, None),
    "sync-bn": (CASES, True, None),
    "uneven": (UNEVEN, False, [5, 3]),
}


def _groups(comm: Comm, groups: list[tuple[list[tuple[str, str | None]], bool, list[int] | None]]) -> list[Any]:
    return [_cases(comm, *group) for group in groups]


@pytest.fixture(scope="module")
def two_ranks() -> dict[str, list[list[Any]]]:
    """Every group of :data:`GROUPS` run by 2 spawned ranks (one spawn: starting the processes is
    most of the time): {group: [rank 0's results, rank 1's]}."""
    ranks = spawn(_groups, 2, list(GROUPS.values()))
    return {name: [ranks[0][i], ranks[1][i]] for i, name in enumerate(GROUPS)}


def _equal(one: dict[str, Any], other: dict[str, Any], what: str) -> None:
    for k, v in one["params"].items():
        torch.testing.assert_close(other["params"][k], v, rtol=1e-5, atol=2e-5, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("bn", [False, True], ids=["no-bn", "sync-bn"])
def test_two_ranks_take_the_one_process_step(bn: bool, two_ranks: dict[str, list[list[Any]]]) -> None:
    """3 SGD steps of 2 ranks on halves of a batch = 3 steps of one process on all of it, for
    every (method, mode); with batch norm, the ranks' batch norm is the global batch's."""
    ones = _cases(Comm(), CASES, bn, None)
    ranks = two_ranks["sync-bn" if bn else "no-bn"]
    for (method, mode), one, r0, r1 in zip(CASES, ones, ranks[0], ranks[1], strict=True):
        _equal(one, r0, f"{method}/{mode}")
        for k in r0["params"]:  # the ranks hold the same bits
            assert torch.equal(r0["params"][k], r1["params"][k]), (method, mode, k)


@pytest.mark.slow
def test_uneven_shards_weigh_by_their_share(two_ranks: dict[str, list[list[Any]]]) -> None:
    """A global batch split 5 + 3 (the last batch of an epoch) still gives the one-process step:
    each rank's losses and gradients count by its share of the samples."""
    ones = _cases(Comm(), UNEVEN, False, None)
    ranks = two_ranks["uneven"]
    for (method, mode), one, r0 in zip(UNEVEN, ones, ranks[0], strict=True):
        _equal(one, r0, f"{method}/{mode} 5+3")


def test_what_is_communicated_depends_on_the_source(two_ranks: dict[str, list[list[Any]]]) -> None:
    """Representation mode with a Gramian method sends T×T numbers where parameters mode sends T×P."""
    r0 = two_ranks["no-bn"][0]  # a rank's bytes sent so far, after each case
    i, j = CASES.index(("nashmtl", "representation")), CASES.index(("nashmtl", "parameters"))
    assert j == i + 1 and i > 0
    rep, params = r0[i]["sent"] - r0[i - 1]["sent"], r0[j]["sent"] - r0[i]["sent"]
    assert params > rep > 0


@pytest.mark.slow
def test_every_method_trains_in_sync(tmp_path: Path) -> None:
    """Every registered method trains 2 epochs in 2 processes and reports ranks_in_sync."""
    methods = METHODS.available()
    summaries = spawn(W.train_runs, 2, methods, str(tmp_path))[0]
    for method in methods:
        s = summaries[method]
        assert s["world_size"] == 2 and s["ranks_in_sync"] is True, method
        written = json.loads((tmp_path / method / "summary.json").read_text())
        assert written["ranks_in_sync"] is True and written["world_size"] == 2
        assert len((tmp_path / method / "metrics.jsonl").read_text().splitlines()) == 3


def test_sharded_batches_are_the_global_batches_split() -> None:
    order = EpochOrder(10, seed=3)
    whole = list(iter(order))
    parts = [list(ShardedBatches(order, 4, r, 2)) for r in range(2)]
    assert [len(p) for p in parts] == [3, 3] == [len(ShardedBatches(order, 4, r, 2)) for r in range(2)]
    for b in range(3):
        assert parts[0][b] + parts[1][b] == whole[4 * b : 4 * b + 4]
    # with 3 ranks the last batch (2 samples) cannot feed every rank: it is dropped
    assert [len(list(ShardedBatches(order, 4, r, 3))) for r in range(3)] == [2, 2, 2]
    assert len(ShardedBatches(order, 4, 0, 3)) == 2


def _torchrun(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "densemtl", "train", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
def test_torchrun_cli(tmp_path: Path, tiny_args: list[str]) -> None:
    """``torchrun --nproc_per_node 2 -m densemtl train``: rank 0 writes the run, the summary says
    2 ranks in sync; a second run into the same --out fails with one line, printed once."""
    out = tmp_path / "run"
    args = [*tiny_args, "--epochs", "2", "--method", "pcgrad", "--out", str(out)]
    done = _torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert done.stdout.count("densemtl: done in") == 1
    again = _torchrun(args, tmp_path)
    assert again.returncode != 0
    errors = [line for line in again.stderr.splitlines() if line.startswith("densemtl: error:")]
    assert len(errors) == 1 and "already" in errors[0], again.stderr[-2000:]


def _run_configs(comm: Comm, calls: list[tuple[dict[str, Any], str]]) -> list[Any]:
    return [W.run_config(comm, values, out) for values, out in calls]


@pytest.mark.slow
def test_resume_across_processes(tmp_path: Path) -> None:
    """2 ranks: 1 epoch, then --resume to 3, equals 3 epochs straight; the run also resumes in one
    process (the global batches do not depend on the number of processes)."""
    values = {"method": "pcgrad", "epochs": 3, "checkpoint_every": 1}
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    spawn(_run_configs, 2, [(values, straight), ({**values, "epochs": 1}, split)])  # one spawn, two runs
    spawn(W.run_config, 2, {"epochs": 3}, split, True)  # the resume: new processes

    def records(run: str) -> list[dict[str, Any]]:
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]

    assert records(split) == records(straight)
    summary = W.run_config(Comm(), {"epochs": 4}, split, True)
    assert summary["world_size"] == 1 and summary["epochs"] == 4


def test_ranks_out_of_sync_stop_the_run() -> None:
    with pytest.raises(RuntimeFault, match=r"ranks out of sync at the end of epoch 3: .* rank\(s\) 1 differ"):
        spawn(W.diverge, 2)


def test_a_global_batch_smaller_than_the_ranks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFault, match=r"ConfigError: --batch-size 1 is the global batch and is smaller"):
        spawn(W.run_config, 2, {"batch_size": 1, "epochs": 1}, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
