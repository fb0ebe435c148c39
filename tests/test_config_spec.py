"""The run spec (training/config_spec.py): each config field declared once, everything else derived.

The bench keys below were computed by ``BenchGrid.baseline_key`` at 22f0f1c, before the spec
existed (hand-written BASELINE_KEYS / RECIPE_DEFAULTS): a bench folder of then must be reused now.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from densemtl.bench.grid import cell_keys, grid_from_values
from densemtl.cli.main import main
from densemtl.cli.spec_flags import given_values
from densemtl.errors import ConfigError
from densemtl.training import config
from densemtl.training.config import (
    RESUMABLE,
    TrainConfig,
    build_config,
    resolve_config,
    resume_config,
    save_yaml,
)
from densemtl.training.config_spec import spec
from densemtl.training.schemes import SCHEMES, Mutual, Single, scheme_for

#: (grid values, {arch: baseline key}) as 22f0f1c computed them.
KEYS_AT_22F0F1C: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({}, {"segnet": "5a90e6f9531d2c27"}),
    (
        {"archs": "segnet,mtan", "methods": "ew,mgda", "seeds": 2},
        {"segnet": "5a90e6f9531d2c27", "mtan": "d394f060407776b1"},
    ),
    ({"optimizer": "sgd", "momentum": 0.8, "lr": 0.01}, {"segnet": "d09854a7f9d98f78"}),
    ({"optimizer": "sgd"}, {"segnet": "772005a4ea05c080"}),
    (
        {"lr_schedule": "cosine", "schedule_epochs": 30, "warmup_epochs": 2, "epochs": 20},
        {"segnet": "7d7f0958673721ce"},
    ),
    (
        {
            "tasks": "seg,depth",
            "amp": "bf16",
            "data_args": {"noise": 0.1},
            "task_args": {"seg": {"x": 1}},
            "augment": True,
            "weight_decay": 1e-4,
        },
        {"segnet": "9c5392c7537e27b2"},
    ),
    (
        {
            "dataset": "nyuv2",
            "data_root": "/data/nyuv2",
            "size": "96x128",
            "arch_args": {"width": 0.5},
            "val_fraction": 0.25,
            "lr_step": 3,
            "lr_gamma": 0.1,
        },
        {"segnet": "c86f92adce97692a"},
    ),
]


@pytest.mark.parametrize(("values", "keys"), KEYS_AT_22F0F1C)
def test_bench_keys_are_those_of_before_the_spec(values: dict[str, Any], keys: dict[str, str]) -> None:
    grid = grid_from_values(dict(values))
    assert {a: grid.baseline_key(a) for a in grid.baseline_archs()} == keys


def test_derived_rules_match_the_lists_of_before() -> None:
    assert RESUMABLE == (
        "checkpoint_every",
        "device",
        "diagnostics_every",
        "epochs",
        "imports",
        "skip_nonfinite",
        "tensorboard",
        "workers",
    )
    assert config.REPLANNED == ("lr_step", "schedule_epochs")
    assert set(cell_keys()) == {"arch", "method", "seed", "peer_arch", "peer_args", "scheme", "scheme_args"}


# -- a field added to the spec reaches every derived place -----------------------------------------
@dataclasses.dataclass
class Extended(TrainConfig):
    """The config with two fields more, declared as the built-in ones are and nowhere else."""

    ema_decay: float = spec(0.0, section="optim", check=">=0 <1", help="decay of a weight average (probe)")
    probe_every: int = spec(1, section="run", check=">=1", resumable=True, result=False, help="probe knob")


@pytest.fixture
def extended(monkeypatch: pytest.MonkeyPatch) -> type[TrainConfig]:
    monkeypatch.setattr(config, "TrainConfig", Extended)
    return Extended


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        assert main(argv) == 2
        raise SystemExit(2)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_an_added_field_is_in_help(extended: type, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--ema-decay EMA_DECAY decay of a weight average (probe) (default: 0.0)" in out
    sections = [
        out.index(s)
        for s in ("optimizer:", "--ema-decay EMA_DECAY decay", "run:", "--probe-every PROBE_EVERY probe knob")
    ]
    assert sections == sorted(sections)  # each in its section
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--ema-decay" in capsys.readouterr().out


def test_an_added_field_is_a_flag_and_a_yaml_key(extended: type, tmp_path: Path) -> None:
    from densemtl.cli.main import build_parser

    args = build_parser().parse_args(["train", "--ema-decay", "0.5", "--epochs", "2"])
    assert given_values(args) == {"ema_decay": 0.5, "epochs": 2}
    (tmp_path / "c.yaml").write_text("ema_decay: 0.25\nprobe_every: 3\n")
    cfg = resolve_config({"epochs": 2}, yaml=tmp_path / "c.yaml")
    assert isinstance(cfg, Extended) and (cfg.ema_decay, cfg.probe_every, cfg.epochs) == (0.25, 3, 2)
    assert cfg.to_dict()["ema_decay"] == 0.25
    (tmp_path / "bad.yaml").write_text("ema_decay: many\n")
    with pytest.raises(ConfigError, match=r"^config key 'ema_decay' must be a number, got 'many'$"):
        resolve_config(yaml=tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'ema_decy' \\(did you mean 'ema_decay'\\?\\)"):
        build_config({"ema_decy": 0.5})


def test_an_added_field_is_range_checked(extended: type, capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(["train", "--ema-decay", "1.5"], capsys)
    assert err == "densemtl: error: ema_decay must be >= 0 and < 1, got 1.5"
    with pytest.raises(ConfigError, match=r"^probe_every must be >= 1, got 0$"):
        build_config({"probe_every": 0})
    with pytest.raises(ConfigError, match=r"^config key 'probe_every' cannot be empty$"):
        build_config({"probe_every": None})


def test_an_added_field_follows_its_resume_rule(extended: type, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_yaml(build_config({"epochs": 2, "ema_decay": 0.5, "probe_every": 1}), run / "config.yaml")
    assert resume_config(run, {"probe_every": 4, "epochs": 3}).probe_every == 4  # resumable
    with pytest.raises(ConfigError, match=r"^cannot change 'ema_decay' when resuming .*probe_every"):
        resume_config(run, {"ema_decay": 0.9})


def test_an_added_field_enters_the_bench_key_when_not_default(extended: type) -> None:
    default = KEYS_AT_22F0F1C[0][1]["segnet"]
    assert grid_from_values({}).baseline_key("segnet") == default  # at its default: keys unchanged
    assert grid_from_values({"ema_decay": 0.0}).baseline_key("segnet") == default
    assert grid_from_values({"probe_every": 5}).baseline_key("segnet") == default  # result=False
    assert grid_from_values({"ema_decay": 0.5}).baseline_key("segnet") != default


def test_a_bad_declaration_fails_when_declared() -> None:
    with pytest.raises(ValueError, match="unknown section"):
        spec(0, section="nowhere", help="x")
    with pytest.raises(ValueError, match="bad range rule"):
        spec(0, section="run", check=">= one", help="x")


# -- the scheme registry -----------------------------------------------------------------------------
def _cli(*flags: str) -> TrainConfig:
    from densemtl.cli.main import build_parser

    return resolve_config(given_values(build_parser().parse_args(["train", *flags])))


def test_a_scheme_is_written_either_way() -> None:
    long = _cli("--scheme", "mutual", "--scheme-arg", "peer_arch=segnet", "--scheme-arg", "mimicry_weight=0.5")
    short = _cli("--peer-arch", "segnet", "--mimicry-weight", "0.5")
    assert long == short and long.scheme == "mutual" and long.peer_arch == "segnet" and long.mimicry_weight == 0.5
    assert isinstance(scheme_for(long), Mutual) and isinstance(scheme_for(_cli()), Single)
    assert _cli().scheme == "single"
    assert _cli("--scheme-arg", "peer_arch=segnet") == dataclasses.replace(short, mimicry_weight=1.0)


def test_a_later_layer_wins_either_way(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("peer_arch: mtan\n")
    cfg = resolve_config({"scheme_args": {"peer_arch": "segnet"}}, yaml=tmp_path / "c.yaml")
    assert cfg.peer_arch == "segnet"
    (tmp_path / "d.yaml").write_text("scheme: mutual\nscheme_args: {peer_arch: mtan}\n")
    assert resolve_config({"peer_arch": "segnet"}, yaml=tmp_path / "d.yaml").peer_arch == "segnet"
    with pytest.raises(ConfigError, match="given twice"):
        build_config({"peer_arch": "mtan", "scheme_args": {"peer_arch": "segnet"}})


def test_an_old_config_yaml_keeps_loading(tmp_path: Path) -> None:
    """A config.yaml of 0.3 has peer_arch and no scheme keys: the same run as ``--scheme mutual``."""
    old = {
        k: v for k, v in build_config({"peer_arch": "segnet"}).to_dict().items() if k not in ("scheme", "scheme_args")
    }
    (tmp_path / "config.yaml").write_text(__import__("yaml").safe_dump(old))
    cfg = build_config(config.load_yaml(tmp_path / "config.yaml"))
    assert cfg == _cli("--scheme", "mutual", "--scheme-arg", "peer_arch=segnet")
    assert resume_config(tmp_path, {"epochs": 20}).scheme == "mutual"  # resumes without a "changed" scheme


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--scheme-arg", "peer_arc=segnet"], "no scheme has a knob 'peer_arc' (did you mean 'peer_arch'?)"),
        (
            ["--scheme", "mutual", "--scheme-arg", "peer_arc=segnet"],
            "scheme 'mutual' has no knob 'peer_arc' (did you mean 'peer_arch'?); valid: peer_arch, peer_args",
        ),
        (["--scheme", "mutal", "--peer-arch", "segnet"], "unknown scheme 'mutal' (did you mean 'mutual'?)"),
        (["--scheme", "single", "--peer-arch", "segnet"], "--peer-arch is a knob of scheme 'mutual'"),
    ],
)
def test_a_bad_scheme_is_one_line(flags: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert message in _one_line_error(["train", *flags], capsys)


def test_list_and_help_show_schemes_and_plugins(capsys: pytest.CaptureFixture) -> None:
    from densemtl import models

    def probe_net(task_channels: dict[str, int] | None = None, girth: int = 3) -> Any:
        raise AssertionError("never built")

    def teacher(cfg: TrainConfig, tau: float = 2.0) -> Any:
        raise AssertionError("never built")

    models.MODELS.register("zzprobe")(probe_net)
    SCHEMES.register("zzteacher")(teacher)
    try:
        with pytest.raises(SystemExit):
            main(["train", "--help"])
        out = capsys.readouterr().out
        assert "zzprobe: girth=3" in out and "zzteacher: tau=2.0" in out
        assert "mutual: peer_arch=None, peer_args={}, mimicry_weight=1.0" in " ".join(out.split())
        assert main(["list"]) == 0
        out = capsys.readouterr().out
        assert "schemes:       mutual (peer_arch=None" in out and "zzteacher (tau=2.0)" in out
        cfg = build_config({"scheme": "zzteacher", "scheme_args": {"tau": 1.0}})
        assert (cfg.scheme, cfg.scheme_args) == ("zzteacher", {"tau": 1.0})
    finally:
        models.MODELS.unregister("zzprobe")
        SCHEMES.unregister("zzteacher")


def test_resume_refuses_a_new_peer_as_such(tmp_path: Path) -> None:
    save_yaml(build_config({"epochs": 2}), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"^cannot change 'peer_arch' when resuming"):
        resume_config(tmp_path, {"peer_arch": "segnet"})
    with pytest.raises(ConfigError, match=r"^cannot change 'peer_arch' when resuming"):
        resume_config(tmp_path, {"scheme": "mutual", "scheme_args": {"peer_arch": "segnet"}})


def test_help_lists_what_import_registers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`train --import MOD --help` imports MOD first, so its architecture is in the help; a module
    that does not import is one line, exit 2."""
    import sys

    from densemtl import models
    from densemtl.cli.main import main

    (tmp_path / "helpplug.py").write_text(
        "from densemtl.models import register\nfrom densemtl.models.segnet import segnet\n\n\n"
        '@register("helpnet")\ndef helpnet(task_channels, width: float = 0.25):\n'
        "    return segnet(task_channels, width)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SystemExit) as done:
            main(["train", "--import", "helpplug", "--help"])
        assert done.value.code == 0
        assert "helpnet: width=0.25" in capsys.readouterr().out
    finally:
        models.MODELS.unregister("helpnet")
        sys.modules.pop("helpplug", None)
    assert main(["train", "--import", "no_such_helpplug", "--help"]) == 2
    assert capsys.readouterr().err.startswith("densemtl: error: plugin 'no_such_helpplug' failed to import")
