"""MDML through the trainer: peer + ensemble metrics, exact resume, no cross-talk at alpha = 0, the
peer's inherited knobs, and a third member given as a scheme (no change to the trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from densemtl.cli.main import main
from densemtl.models import count_parameters
from densemtl.training.config import TrainConfig, build_config
from densemtl.training.member import MemberSpec
from densemtl.training.schemes import Mutual, inherited_arch_args
from densemtl.training.trainer import Trainer

PEER = ["--peer-arch", "segnet", "--peer-arg", "width=0.125", "--peer-arg", "depth_stages=4"]


def test_mdml_writes_peer_and_ensemble_metrics(tmp_path: Path, tiny_args: list[str]) -> None:
    run = tmp_path / "mdml"
    args = [*tiny_args, *PEER, "--mimicry-temperature", "2", "--alpha-warmup-epochs", "1", "--epochs", "2"]
    assert main(["train", *args, "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("metrics", "peer_metrics", "ensemble_metrics"):
        assert set(summary[key]) == {"seg", "depth", "normal"}
        assert set(summary[key]["seg"]) == {"miou", "pix_acc"}
    assert summary["metrics"] != summary["peer_metrics"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["mimicry_weight"] for r in lines[1:]] == [0.0, 1.0]  # ramped from 0 over one epoch
    assert "peer_train_loss" in lines[1]
    assert summary["peer_parameters"]["total"] > summary["parameters"]["total"]  # the deeper peer


@pytest.mark.usefixtures("no_plots")  # the figures decide nothing here and are most of a tiny run
def test_mdml_resume_is_exact(tmp_path: Path, tiny_args: list[str]) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["train", *tiny_args, *PEER, "--epochs", "2", "--out", str(whole)]) == 0
    assert main(["train", *tiny_args, *PEER, "--epochs", "1", "--out", str(split)]) == 0
    assert main(["train", "--out", str(split), "--resume", "--epochs", "2", "--quiet"]) == 0
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=False)
    for part in ("model",):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), k
        for k, v in a["peer"][part].items():
            assert torch.equal(v, b["peer"][part][k]), k


@pytest.mark.usefixtures("no_plots")
def test_zero_mimicry_weight_trains_the_main_network_as_alone(tmp_path: Path) -> None:
    base = {
        "size": [32, 40],
        "n_train": 4,
        "n_val": 2,
        "batch_size": 2,
        "epochs": 1,
        "arch_args": {"width": 0.125, "depth_stages": 3},
        "method": "pcgrad",
    }
    alone = Trainer(build_config(base), tmp_path / "alone", progress=False, log=lambda s: None)
    alone.run()
    mutual_cfg = build_config(
        {**base, "peer_arch": "segnet", "peer_args": {"width": 0.125, "depth_stages": 3}, "mimicry_weight": 0.0}
    )
    mutual = Trainer(mutual_cfg, tmp_path / "mutual", progress=False, log=lambda s: None)
    mutual.run()
    for (k, v), w in zip(alone.model.state_dict().items(), mutual.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    # and the peer, seeded differently, is another network
    peer = mutual.members[1].model
    assert not torch.equal(next(iter(peer.parameters())), next(iter(mutual.model.parameters())))


TINY = {"size": [32, 40], "n_train": 4, "n_val": 2, "batch_size": 4, "epochs": 1,
        "arch_args": {"width": 0.125, "depth_stages": 3}}  # fmt: skip


def quiet(cfg: TrainConfig, out: Path, **kwargs: object) -> Trainer:
    return Trainer(cfg, out, progress=False, log=lambda s: None, **kwargs)  # type: ignore[arg-type]


def test_the_peer_inherits_the_main_networks_knobs(tmp_path: Path) -> None:
    # The README's shallower peer: only depth_stages given, the width comes from --arch-arg.
    cfg = build_config({**TINY, "peer_arch": "segnet", "peer_args": {"depth_stages": 4}})
    trainer = quiet(cfg, tmp_path / "run")
    main, peer = trainer.members
    assert peer.arch_args == {"width": 0.125, "depth_stages": 4}
    same_depth = build_config({**TINY, "peer_arch": "segnet", "peer_args": {"depth_stages": 3}})
    twin = quiet(same_depth, tmp_path / "twin").members[1]
    assert count_parameters(twin.model) == count_parameters(main.model)  # not a full-width peer
    assert count_parameters(peer.model)["total"] > count_parameters(main.model)["total"]
    # another architecture takes only the knobs its factory has (hps has no width or depth_stages)
    assert inherited_arch_args(cfg, "hps", {"head_channels": 8}) == {"head_channels": 8}


@pytest.mark.usefixtures("no_plots")
def test_a_third_member_trains_without_touching_the_trainer(tmp_path: Path) -> None:
    cfg = build_config({**TINY, "method": "rlw"})
    knobs = {"width": 0.125, "depth_stages": 3}
    peers = [MemberSpec("peer", "segnet", knobs, seed_offset=1), MemberSpec("peer2", "segnet", knobs, seed_offset=2)]
    trainer = quiet(cfg, tmp_path / "three", scheme=Mutual(cfg, peers))
    before = [[p.detach().clone() for p in m.model.parameters()] for m in trainer.members]
    summary = trainer.run()
    assert len(trainer.members) == 3
    for m, params in zip(trainer.members, before, strict=True):
        assert m.engine.step_count == 1
        assert any(not torch.equal(a, b) for a, b in zip(params, m.model.parameters(), strict=True)), m.name
    record = json.loads((tmp_path / "three" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("val", "peer_val", "peer2_val", "ensemble_val", "train_loss", "peer2_train_loss", "peer2_weights"):
        assert set(record[key]) == {"seg", "depth", "normal"}, key
    assert record["mimicry_weight"] == 1.0
    assert set(summary["peer2_metrics"]) == {"seg", "depth", "normal"} and "peer2_parameters" in summary
    state = torch.load(tmp_path / "three" / "checkpoints" / "last.pt", weights_only=False)
    assert set(state["peer2"]["model"]) == set(state["model"])
