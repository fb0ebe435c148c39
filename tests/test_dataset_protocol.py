"""A dataset is a registered factory: the trainer gives it ``data_args`` and calls ``set_epoch``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from densemtl import data
from densemtl.bench.runner import Holdout
from densemtl.cli.main import main
from densemtl.data import DATASETS, MultiTaskDataset
from densemtl.training.config import TrainConfig
from densemtl.training.trainer import Trainer


class Flat(torch.utils.data.Dataset):
    """Constant-grey scenes whose grey level is a knob; remembers the epochs it was set to."""

    tasks = ("seg", "depth")
    num_classes = 3

    def __init__(self, split: str, n: int | None, size: tuple[int, int] | None, level: float) -> None:
        self.split, self.n, self.size, self.level = split, n or 4, size or (16, 16), level
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        h, w = self.size
        return {
            "image": torch.full((3, h, w), self.level),
            "seg": torch.full((h, w), i % self.num_classes, dtype=torch.long),
            "depth": torch.full((1, h, w), 1.0 + self.level),
        }

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


BUILT: list[Flat] = []


def flat(
    split: str,
    root: str | None = None,
    size: tuple[int, int] | None = None,
    augment: bool = False,
    seed: int = 0,
    n: int | None = None,
    num_classes: int | None = None,
    level: float = 0.5,
) -> Flat:
    BUILT.append(Flat(split, n, size, level))
    return BUILT[-1]


@pytest.fixture
def registered() -> Iterator[None]:
    data.register("flat")(flat)
    BUILT.clear()
    yield
    DATASETS.unregister("flat")


def test_datasets_follow_the_protocol() -> None:
    synthetic = data.create("synthetic", "val", n=2, size=(16, 16))
    assert isinstance(synthetic, MultiTaskDataset) and isinstance(Holdout(synthetic, [1]), MultiTaskDataset)
    holdout = Holdout(synthetic, [0, 1])
    holdout.set_epoch(3)
    assert synthetic.epoch == 3  # the carved split sets its base's epoch


def test_data_args_reach_the_factory_and_set_epoch_is_called(tmp_path: Path, registered: None) -> None:
    cfg = TrainConfig(
        dataset="flat", data_args={"level": 0.25}, size=(16, 16), n_train=4, n_val=2, batch_size=2, epochs=2,
        arch_args={"width": 0.125, "depth_stages": 3},
    )  # fmt: skip
    summary = Trainer(cfg, tmp_path / "run", progress=False, log=lambda s: None).run()
    train, val = BUILT
    assert train.level == val.level == 0.25 and summary["tasks"] == ["seg", "depth"]
    assert train.epochs == [1, 2]  # one data draw per epoch, from the trainer
    assert val.epochs and set(val.epochs) == {0}


@pytest.mark.parametrize(("arg", "needle"), [("nope=1", "nope"), ("level=high", "level"), ("size=3", "size")])
def test_a_bad_data_arg_is_one_line(
    tmp_path: Path, tiny_args: list[str], capsys: pytest.CaptureFixture, registered: None, arg: str, needle: str
) -> None:
    run = tmp_path / "run"
    assert main(["train", *tiny_args, "--dataset", "flat", "--data-arg", arg, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("densemtl: error:") and "\n" not in err and needle in err
    assert not run.exists()
