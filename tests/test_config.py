"""The config is resolved in the library: the demo preset, YAML then overrides, validation on construction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from densemtl.cli.main import build_parser
from densemtl.cli.spec_flags import given_values
from densemtl.errors import ConfigError
from densemtl.training.checkpoint import load_model
from densemtl.training.config import TrainConfig, resolve_config, resume_config
from densemtl.training.trainer import Trainer


def cli_config(*flags: str) -> TrainConfig:
    """The config ``densemtl train FLAGS`` runs (parsed by the CLI, resolved by the library)."""
    args = build_parser().parse_args(["train", *flags])
    values = given_values(args)
    return resolve_config(values, yaml=getattr(args, "config", None))


def test_the_default_config_is_the_cli_demo() -> None:
    assert TrainConfig() == cli_config() == resolve_config()
    assert cli_config("--arch", "hps") == TrainConfig(arch="hps")
    assert cli_config("--epochs", "3", "--arch-arg", "width=0.5") == TrainConfig(epochs=3, arch_args={"width": 0.5})


def test_the_demo_preset_fills_only_unset_keys_on_synthetic_data() -> None:
    demo = TrainConfig()
    # another dataset keeps its own size, all its samples and the architecture's default knobs
    real = TrainConfig(dataset="nyuv2", data_root="/data/nyuv2")
    assert (real.size, real.n_train, real.n_val, real.arch_args) == (None, None, None, {})
    # another architecture keeps the demo's data sizes but not SegNet's knobs
    hps = TrainConfig(arch="hps")
    assert (hps.size, hps.n_train, hps.arch_args) == (demo.size, demo.n_train, {})
    # a key given as None stays None (the dataset's own), and no preset at all leaves every one unset
    assert TrainConfig(size=None).size is None and TrainConfig(size=None).n_train == demo.n_train
    bare = resolve_config(preset=None)
    assert (bare.size, bare.n_train, bare.arch_args) == (None, None, {})


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": "fast"}, "lr"), ({"size": (8, 8)}, "8")],
)
def test_construction_validates(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=needle):
        dataclasses.replace(TrainConfig(), **kwargs)


def test_construction_coerces() -> None:
    assert TrainConfig(lr=1).lr == 1.0 and TrainConfig(size=[32, 40]).size == (32, 40)  # type: ignore[arg-type]
    assert TrainConfig(arch_args={"depth-stages": 3}).arch_args == {"depth_stages": 3}


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 0.01\narch-args: {width: 0.5, depth_stages: 3}\n")
    cfg = resolve_config({"epochs": 1, "arch_args": {"width": 0.125}}, yaml=path)
    assert (cfg.epochs, cfg.lr) == (1, 0.01)  # the override wins, the YAML fills the rest
    assert cfg.arch_args == {"width": 0.125, "depth_stages": 3}  # knobs merge key by key
    assert cfg.size == TrainConfig().size  # and the preset what neither gives
    assert cli_config("--config", str(path), "--arch-arg", "width=0.125", "--epochs", "1") == cfg
    with pytest.raises(ConfigError, match="epochz"):
        resolve_config({"epochz": 1})


def test_resume_and_load_model_from_the_library(tmp_path: Path) -> None:
    cfg = resolve_config({"size": (32, 40), "n_train": 2, "n_val": 2, "epochs": 0, "arch_args": {"width": 0.125}})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    trainer.run()
    assert resume_config(tmp_path / "run", {"epochs": 2}).epochs == 2
    with pytest.raises(ConfigError, match="'lr'"):
        resume_config(tmp_path / "run", {"lr": 0.5})
    model, loaded, state = load_model(tmp_path / "run")
    assert loaded == cfg and state["epoch"] == 0 and not model.training
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
