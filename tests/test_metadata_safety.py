"""Every field of every file densemtl reads is checked before use (issue 21): checkpoint and export
metadata, YAML, timm ``backbone_args``, InvPT's input sizes. Each bad value is one line, exit 2,
nothing written, no memory blown up."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from densemtl.cli.main import main
from densemtl.errors import ConfigError


@pytest.fixture
def work(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny run (epoch 0) and its export; its data linked (read only)."""
    shutil.copytree(tiny_run / "run", tmp_path / "run")
    shutil.copy(tiny_run / "m.safetensors", tmp_path / "m.safetensors")
    (tmp_path / "data").symlink_to(tiny_run / "data")
    return tmp_path


def edit_pt(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)


def edit_safetensors(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    decoded = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    edit(decoded)
    save_file(weights, str(path), metadata={**{k: json.dumps(v) for k, v in decoded.items()}, "format": meta["format"]})


def one_line(capsys: pytest.CaptureFixture, argv: list[str], status: int = 2) -> str:
    capsys.readouterr()
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert err.startswith("densemtl: error: ") and err.count("\n") == 1 and "Traceback" not in out + err, err
    return err


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _knob(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["config"]["arch_args"].__setitem__(key, value)


FIELDS = [
    ("size", _set("size", ["a", "b"]), "'size' must be null or [height, width]"),
    ("size", _set("size", [200000, 200000]), "'size' must be null or [height, width], whole numbers 16..8192"),
    ("size", _set("size", [-64, 5]), "'size' must be null or [height, width]"),
    ("size", _set("size", [32.5, 40]), "'size' must be null"),
    ("num_classes", _set("num_classes", 2**31), "'num_classes' must be an integer in 1..65536, got 2147483648"),
    ("num_classes", _set("num_classes", True), "'num_classes' must be an integer in 1..65536, got True"),
    ("epoch", _set("epoch", "abc"), "'epoch' must be an integer >= 0, got 'abc'"),
    ("epoch", _set("epoch", None), "'epoch' must be an integer >= 0, got None"),
    ("epoch", _set("epoch", 1.5), "'epoch' must be an integer >= 0, got 1.5"),
    ("epoch", _set("epoch", -1), "'epoch' must be an integer >= 0, got -1"),
    ("tasks", _set("tasks", ["seg", "seg"]), "'tasks' must be a list of task names without repeats"),
    ("tasks", _set("tasks", "seg"), "'tasks' must be a list of task names"),
    ("arch", _set("arch", 5), "'arch' must be null or an architecture name, got 5"),
    ("config", _set("config", [1, 2]), "'config' must be a mapping, got list"),
    ("config", lambda d: d["config"].__setitem__("epochs", -3), "holds a bad config: epochs must be >= 0, got -3"),
    ("config", lambda d: d["config"].__setitem__("size", [16.5, 20]), "holds a bad config: size [16.5, 20]: sides"),
    ("width", _knob("width", 4096), "architecture 'segnet' {'width': 4096, 'depth_stages': 3} has 4.39e+13 param"),
    ("width", _knob("width", 2), "does not match architecture 'segnet'"),
]


@pytest.mark.parametrize(("field", "edit", "message"), FIELDS, ids=[f"{f[0]}-{i}" for i, f in enumerate(FIELDS)])
@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_bad_field_is_one_line_before_a_model_is_built(
    work: Path, capsys: pytest.CaptureFixture, field: str, edit: Callable, message: str, kind: str
) -> None:
    file = work / "run" / "checkpoints" / "last.pt" if kind == "pt" else work / "m.safetensors"
    (edit_pt if kind == "pt" else edit_safetensors)(file, edit)
    img = work / "a.npy"
    import numpy as np

    np.save(img, np.random.default_rng(0).random((32, 40, 3)).astype(np.float32))
    err = one_line(capsys, ["predict", "--checkpoint", str(file), str(img), "--out", str(work / "pred")])
    assert f"checkpoint {file}" in err and message in err, err
    assert not (work / "pred").exists()


def test_other_knobs_are_refused_from_their_shapes_before_a_real_build(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """width 2 over width-0.125 weights: the meta model's shapes are compared first, nothing built."""
    from densemtl.training import builders

    real = builders.create_model
    on: list[str] = []
    monkeypatch.setattr(
        builders, "create_model", lambda *a, **k: on.append(str(torch.empty(0).device)) or real(*a, **k)
    )
    edit_pt(work / "run" / "checkpoints" / "last.pt", _knob("width", 2))
    err = one_line(capsys, ["eval", "--checkpoint", str(work / "run")])
    assert "architecture 'segnet' {'width': 2, 'depth_stages': 3}" in err and "mismatched keys" in err
    assert on == ["meta"]


def test_model_over_memory_is_refused_in_train(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from densemtl.training import model_check

    monkeypatch.setattr(model_check, "physical_memory", lambda: 10_000_000)  # 10 MB
    err = one_line(capsys, ["train", "--arch-arg", "width=4", "--epochs", "0", "--out", str(tmp_path / "r")])
    assert (
        "architecture 'segnet' {'width': 4} has 4.01e+08 parameters (1.6 GB)" in err
        and "more than this machine's" in err
    )
    assert not (tmp_path / "r").exists()


def test_infinite_width_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = one_line(capsys, ["train", "--arch-arg", "width=.inf", "--epochs", "0", "--out", str(tmp_path / "r")])
    assert "a knob is too large" in err


def test_resume_from_an_export_is_one_line(work: Path, capsys: pytest.CaptureFixture) -> None:
    last = work / "run" / "checkpoints" / "last.pt"
    shutil.copy(work / "m.safetensors", last)
    before = last.read_bytes()
    err = one_line(capsys, ["train", "--resume", "--out", str(work / "run"), "--epochs", "1"])
    assert "is a weights-only export (safetensors), not a training checkpoint" in err
    assert last.read_bytes() == before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("optimizer"), "holds no 'optimizer' state"),
        (_set("scheduler", [1]), "holds no 'scheduler' state"),
        (_set("history", [{"epoch": "x"}]), "'history' must be a list of epoch records"),
        (_set("step", -2), "'step' must be an integer >= 0, got -2"),
        (_set("elapsed_s", float("nan")), "'elapsed_s' must be a finite number >= 0, got nan"),
        (_set("rng", {"python": 1}), "holds a damaged 'rng'"),
        (lambda s: s.__setitem__("optimizer", {"state": {}, "param_groups": []}), "damaged 'optimizer' (0 parameter"),
    ],
)
def test_resume_from_a_damaged_checkpoint_is_one_line(
    work: Path, capsys: pytest.CaptureFixture, edit: Callable, message: str
) -> None:
    edit_pt(work / "run" / "checkpoints" / "last.pt", edit)
    err = one_line(capsys, ["train", "--resume", "--out", str(work / "run"), "--epochs", "1"])
    assert message in err, err


def test_metrics_jsonl_records_without_val_or_with_bool_epochs_are_left_out(tmp_path: Path) -> None:
    from densemtl.training.rundir import read_history

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 0, "val": {}}\n{"epoch": true, "val": {}}\n{"epoch": 1}\n{"epoch": -1, "val": {}}\n')
    assert read_history(p) == [{"epoch": 0, "val": {}}]


# -- YAML -------------------------------------------------------------------------------------------
def test_yaml_deep_nesting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("arch_args: {x: " + "[" * 5000 + "]" * 5000 + "}\n")
    err = one_line(capsys, ["train", "--config", str(conf), "--out", str(tmp_path / "r")])
    assert err == f"densemtl: error: config file {conf} is nested too deeply (more than 32 levels)\n"
    err = one_line(capsys, ["train", "--arch-arg", "x=" + "[" * 5000, "--out", str(tmp_path / "r")])
    assert "--arch-arg x is nested too deeply" in err


def test_flag_value_with_a_duplicate_key_is_refused() -> None:
    from densemtl.training.config import parse_kv

    with pytest.raises(ConfigError, match=r"--arch-arg backbone_args: key 'depth' is given twice \(lines 1 and 1\)"):
        parse_kv(["backbone_args={depth: 2, depth: 3}"], "--arch-arg")
    assert parse_kv(["x=[1", "y=off"], "--arch-arg") == {"x": "[1", "y": False}  # not YAML: the text


def test_num_classes_upper_bound() -> None:
    from densemtl.training.config import resolve_config

    with pytest.raises(ConfigError, match="num_classes must be at most 65536, got 2147483648"):
        resolve_config({"num_classes": 2**31})


def test_yaml_duplicate_key_names_key_and_lines(tmp_path: Path) -> None:
    from densemtl.training.config import load_yaml

    conf = tmp_path / "c.yaml"
    conf.write_text("epochs: 1\narch_args:\n  width: 0.5\n  width: 0.25\n")
    with pytest.raises(ConfigError, match=r"config file .*c.yaml: key 'width' is given twice \(lines 3 and 4\)"):
        load_yaml(conf)
    conf.write_text("a: &a {epochs: 1}\nb:\n  <<: *a\n  epochs: 2\n")  # a merge key may be overridden
    assert load_yaml(conf)["b"] == {"epochs": 2}


@pytest.mark.parametrize(("text", "amp"), [("amp: off\n", "off"), ("amp: bf16\n", "bf16"), ("amp: 'off'\n", "off")])
def test_yaml_amp_takes_the_flag_spellings(tmp_path: Path, text: str, amp: str) -> None:
    from densemtl.training.config import resolve_config

    conf = tmp_path / "c.yaml"
    conf.write_text(text + "optimizer: adam\n")
    assert resolve_config(yaml=conf).amp == amp


def test_yaml_amp_yes_is_refused_by_name(tmp_path: Path) -> None:
    from densemtl.training.config import resolve_config

    conf = tmp_path / "c.yaml"
    conf.write_text("amp: yes\naugment: yes\n")  # amp keeps its text, a boolean key still reads yes as true
    with pytest.raises(ConfigError, match="amp must be one of off, bf16, fp16, got 'yes'"):
        resolve_config(yaml=conf)


@pytest.mark.parametrize(
    ("size", "ok"),
    [("[32.7, 40.9]", None), ("[32.0, 48]", (32, 48)), ("48", (48, 48)), ("[.inf, 32]", None), ("[true, 32]", None)],
)
def test_yaml_size_must_be_whole_numbers(tmp_path: Path, size: str, ok: tuple[int, int] | None) -> None:
    from densemtl.training.config import resolve_config

    conf = tmp_path / "c.yaml"
    conf.write_text(f"size: {size}\n")
    if ok is None:
        with pytest.raises(ConfigError, match="size"):
            resolve_config(yaml=conf)
    else:
        assert resolve_config(yaml=conf).size == ok


def test_bench_yaml_goes_through_the_one_loader(tmp_path: Path) -> None:
    from densemtl.bench.runner import check_out

    (tmp_path / "bench.yaml").write_text("base: {}\nbase: {}\n")
    with pytest.raises(ConfigError, match="key 'base' is given twice"):
        check_out(tmp_path, {"base": {}})


# -- timm backbone_args -----------------------------------------------------------------------------
TIMM_BAD = [
    ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path='/etc/passwd' is refused: it would make timm read a file"),
    ({"pretrained_cfg_overlay": {"file": "x.pth"}}, "pretrained_cfg_overlay={'file': 'x.pth'} is refused"),
    ({"pretrained_cfg": "resnet18"}, "pretrained_cfg='resnet18' is refused"),
    ({"cache_dir": "c"}, "cache_dir='c' is refused"),
    ({"act_layer": "../evil"}, "act_layer='../evil' is refused"),
    ({"in_chans": 1}, "in_chans=1 is refused; densemtl's images have 3 channels"),
    ({"features_only": False}, "features_only=False is refused; densemtl always builds"),
    ({"out_indices": [1]}, "out_indices=[1] is refused"),
    ({"num_classes": 10}, "num_classes=10 is refused; timm's classifier is not used"),
]


@pytest.mark.parametrize(("args", "message"), TIMM_BAD, ids=[next(iter(a)) for a, _ in TIMM_BAD])
@pytest.mark.parametrize("arch", ["hps", "invpt"])
def test_timm_backbone_args_refused(arch: str, args: dict[str, Any], message: str) -> None:
    pytest.importorskip("timm")
    from densemtl.training.builders import create_model

    knobs = {"backbone": "timm:resnet10t" if arch == "hps" else "timm:vit_tiny_patch16_224", "backbone_args": args}
    with pytest.raises(ConfigError, match=f"{arch} knob 'backbone_args': ") as e:
        create_model(arch, knobs, ("seg", "depth"), 7)
    assert message in str(e.value)


def test_timm_checkpoint_path_in_a_shared_checkpoint_is_refused(
    work: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """A checkpoint whose config names a file for timm: refused before timm is called."""
    pytest.importorskip("timm")
    import timm

    calls: list[object] = []
    real = timm.create_model
    timm.create_model = lambda *a, **k: calls.append(k) or real(*a, **k)  # type: ignore[assignment]
    try:
        edit_pt(
            work / "run" / "checkpoints" / "last.pt",
            lambda s: s["config"].update(
                arch="hps",
                arch_args={"backbone": "timm:resnet10t", "backbone_args": {"checkpoint_path": "/etc/passwd"}},
            ),
        )
        err = one_line(capsys, ["eval", "--checkpoint", str(work / "run")])
    finally:
        timm.create_model = real  # type: ignore[assignment]
    assert "checkpoint_path='/etc/passwd' is refused" in err and not calls


def test_drop_path_rate_is_not_a_path() -> None:
    pytest.importorskip("timm")
    from densemtl.models.timm_backbone import check_backbone_args

    args = {"drop_path_rate": 0.1, "act_layer": "gelu", "in_chans": 3}
    assert check_backbone_args("hps", "timm:resnet10t", args) == args


def test_timm_model_without_feature_maps_is_one_line() -> None:
    pytest.importorskip("timm")
    from densemtl.training.builders import create_model

    with pytest.raises(ConfigError, match=r"mtan knob 'backbone': timm cannot build pit_ti_224 as a feature extractor"):
        create_model("mtan", {"backbone": "timm:pit_ti_224"}, ("seg",), 7)  # 4 levels: pit has 3


# -- InvPT input sizes -------------------------------------------------------------------------------
SWIN = "{embed_dim: 24, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}"


def test_invpt_swin_refuses_a_size_below_its_window(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("timm")
    argv = ["train", "--arch", "invpt", "--arch-arg", "backbone=timm:swin_tiny_patch4_window7_224"]
    argv += ["--arch-arg", f"backbone_args={SWIN}", "--arch-arg", "embed_dim=16", "--arch-arg", "num_heads=1"]
    err = one_line(capsys, [*argv, "--size", "32x40", "--epochs", "0", "--out", str(tmp_path / "r")])
    assert err == (
        "densemtl: error: --size 32x40 does not fit architecture 'invpt': both sides must be at least 224 pixels "
        "(timm:swin_tiny_patch4_window7_224 attends in 7x7 windows at stride 32); use a larger --size\n"
    )
    assert not (tmp_path / "r").exists()


def test_invpt_vit_minimum_is_its_stride() -> None:
    pytest.importorskip("timm")
    from densemtl.models import MODELS, create
    from densemtl.tasks import task_channels

    model = create("invpt", task_channels(("seg",), 7), **MODELS.tiny("invpt"))
    assert model.min_input_side() == 16
