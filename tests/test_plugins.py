"""Plugins: a user's module registering an architecture, a method, a task and a dataset reaches
``train``, ``eval``, ``predict`` and ``list`` through ``--import``, a config's ``imports:`` and the
``densemtl.plugins`` entry-point group; a run records its imports, and ``eval``/``predict`` on it
import them with ``--trust-imports`` (tests/test_plugin_trust.py: never without a flag). A command
runs in this process with its plugin folder on the path, and everything it imported or registered is
forgotten after it; what needs a fresh interpreter (entry points, ``-m densemtl``, a worker) runs
in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from densemtl import data, methods, models, plugins, tasks
from densemtl.cli.main import main

#: a plugin: an architecture (a narrow SegNet), a task (the grey level) and a dataset yielding it
PLUGIN = """
from typing import Any

from torch import Tensor

from densemtl import data, models, tasks
from densemtl.tasks.base import Column, Task


@models.register("myarch")
def myarch(task_channels: dict[str, int], width: float = 0.125) -> Any:
    return models.create("segnet", task_channels=task_channels, width=width, depth_stages=3)


class MeanAbsoluteError:
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.total += (pred.double() - target.double()).abs().sum().item()
        self.count += target.numel()

    def compute(self) -> dict[str, float]:
        return {"mae": self.total / self.count if self.count else float("nan")}


@tasks.register("grey")
class Grey(Task):
    lower_is_better = {"mae": True}
    primary = "mae"
    columns = (Column("mae", "greyMAE"),)
    interpolation = "bilinear"

    def channels(self, num_classes: int) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs().mean()

    def accumulator(self, num_classes: int) -> MeanAbsoluteError:
        return MeanAbsoluteError()


class GreyScenes:
    def __init__(self, inner: Any) -> None:
        self.inner, self.tasks = inner, (*inner.tasks, "grey")
        self.num_classes, self.size = inner.num_classes, inner.size

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self.inner[index]
        sample["grey"] = sample["image"].mean(dim=0, keepdim=True)
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)


@data.register("greyscenes")
def greyscenes(split: str, **knobs: Any) -> GreyScenes:
    return GreyScenes(data.create("synthetic", split, **knobs))
"""

#: a second plugin, a method (equal weights times two), named in a config file's ``imports:``
METHOD = """
import torch

from densemtl import methods
from densemtl.balancing.base import LossWeighting, Requirements


@methods.register("twice")
class Twice(LossWeighting):
    requirements = Requirements(sources=("losses",), weighted_sum=True)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return 2 * torch.ones_like(losses)
"""

PLUGIN_MODULES = ("myplug", "mymethod")
TINY = ["--size", "32x40", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "1", "--quiet"]


def _fresh_cli(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``densemtl ARGS`` in a fresh interpreter (its own entry points, registries and imports)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    src = str(Path(__file__).resolve().parents[1] / "src")  # this checkout's densemtl, whatever is installed
    env["PYTHONPATH"] = src if pythonpath is None else f"{src}{os.pathsep}{pythonpath}"
    return subprocess.run(
        [sys.executable, "-m", "densemtl.cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


REGISTRIES = (models.MODELS, methods.METHODS, tasks.TASKS, data.DATASETS)


def _cli(args: list[str], cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``densemtl ARGS`` in this process, in ``cwd`` with ``pythonpath`` first on ``sys.path``; the
    modules it imported, the names they registered, its plugin list and the path are put back after."""
    path, modules, loaded = list(sys.path), set(sys.modules), list(plugins._loaded)
    names = [set(r.available()) for r in REGISTRIES]
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    if pythonpath is not None:
        sys.path[:0] = str(pythonpath).split(os.pathsep)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(args)
            except SystemExit as e:  # argparse's usage errors
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(before)
        sys.path[:] = path
        plugins._loaded[:] = loaded
        for name in set(sys.modules) - modules:
            if name.split(".")[0] in PLUGIN_MODULES:
                del sys.modules[name]
        for registry, had in zip(REGISTRIES, names, strict=True):
            for name in set(registry.available()) - had:
                registry.unregister(name)
    return subprocess.CompletedProcess(["densemtl", *args], rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def plugdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the two plugin modules (on PYTHONPATH in the subprocesses)."""
    d = tmp_path_factory.mktemp("plugins")
    (d / "myplug.py").write_text(PLUGIN)
    (d / "mymethod.py").write_text(METHOD)
    return d


@pytest.fixture(scope="module")
def run(plugdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run of the plugin's architecture, dataset and task (--import) with its method (imports:)."""
    work = tmp_path_factory.mktemp("work")
    (work / "cfg.yaml").write_text("imports: [mymethod]\nmethod: twice\n")
    out = work / "run"
    args = ["train", "--import", "myplug", "--config", "cfg.yaml", "--trust-imports", "--arch", "myarch",
            "--dataset", "greyscenes"]  # fmt: skip
    r = _cli([*args, *TINY, "--out", str(out)], work, plugdir)
    assert r.returncode == 0, r.stderr
    return out


def test_train_records_the_imports(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["imports"] == ["mymethod", "myplug"]  # the file's, then the flag's
    assert (cfg["arch"], cfg["method"], cfg["dataset"]) == ("myarch", "twice", "greyscenes")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["seg", "depth", "normal", "grey"]


def test_eval_and_predict_import_them_again(run: Path, plugdir: Path, tmp_path: Path) -> None:
    r = _cli(["eval", "--checkpoint", str(run), "--json", "m.json", "--trust-imports"], tmp_path, plugdir)
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / "m.json").read_text())["metrics"]) == {"seg", "depth", "normal", "grey"}
    image = tmp_path / "x.npy"
    import numpy as np

    np.save(image, np.random.default_rng(0).random((32, 40, 3), dtype=np.float32))
    r = _cli(["predict", "--checkpoint", str(run / "checkpoints" / "last.pt"), str(image), "--out", "p",
              "--import", "myplug", "--import", "mymethod"], tmp_path, plugdir)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p" / "x_pred.png").is_file()
    # without the plugin on the path: one line naming the module, exit 2
    r = _cli(["eval", "--checkpoint", str(run), "--trust-imports"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "plugin 'mymethod' failed to import: ModuleNotFoundError" in r.stderr
    # without a flag: refused, naming the run's modules
    r = _cli(["eval", "--checkpoint", str(run)], tmp_path, plugdir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "names plugin modules mymethod, myplug (the run was trained with them)" in r.stderr


def _dist(site: Path, name: str, entry_points: str) -> None:
    """An installed distribution's metadata (``.dist-info``) declaring ``entry_points``."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_entry_points(plugdir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _dist(site, "myplug", "[densemtl.plugins]\nmyplug = myplug\n")
    (site / "callme.py").write_text(
        "from densemtl import methods\n\n\ndef setup():\n    methods.register('fromcall')(methods.METHODS.get('ew'))\n"
    )
    _dist(site, "callme", "[densemtl.plugins]\ncallme = callme:setup\n")
    r = _fresh_cli(["list"], tmp_path, Path(f"{site}{os.pathsep}{plugdir}"))
    assert r.returncode == 0, r.stderr
    assert "myarch" in r.stdout and "greyscenes" in r.stdout and "fromcall" in r.stdout
    # a broken entry point: one line naming it
    _dist(site, "broken", "[densemtl.plugins]\nbroken = nosuchmodule_xyz\n")
    r = _fresh_cli(["list"], tmp_path, Path(f"{site}{os.pathsep}{plugdir}"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "plugin entry point 'broken' (nosuchmodule_xyz) failed to import" in r.stderr


def test_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "dup_arch.py").write_text("from densemtl import models\nmodels.register('segnet')(lambda **k: None)\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('the plugin is broken\\nsecond line')\n")
    cases = {
        "dup_arch": "plugin 'dup_arch' registers architecture 'segnet', a name already registered",
        "raises": "plugin 'raises' failed to import: RuntimeError: the plugin is broken",
        "no_such_plugin_abc": "plugin 'no_such_plugin_abc' failed to import: ModuleNotFoundError",
        "not a module": "--import 'not a module' is not a module name",
    }
    for module, message in cases.items():
        assert main(["list", "--import", module]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert "dup_arch" not in plugins.loaded()


def test_load_plugins_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", [])  # no later main() hands this module to its workers
    (tmp_path / "counted_plugin.py").write_text(
        "import builtins\nbuiltins.COUNTED = getattr(builtins, 'COUNTED', 0) + 1\n"
    )
    import builtins

    try:
        assert plugins.load_plugins(["counted_plugin"]) == ["counted_plugin"]
        assert plugins.load_plugins(["counted_plugin", "counted_plugin"]) == []
        assert builtins.COUNTED == 1  # type: ignore[attr-defined]
    finally:
        sys.modules.pop("counted_plugin", None)
        if hasattr(builtins, "COUNTED"):
            del builtins.COUNTED  # type: ignore[attr-defined]


# -- the command line's surface: --help of every command, --version --------------------------------
def _commands() -> list[list[str]]:
    """Every command path: [], ["train"], ..., ["data", "synth"], ..."""
    import argparse

    from densemtl.cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> list[list[str]]:
        out = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += walk(sub, [*path, name])
        return out

    return walk(build_parser(), [])


def test_every_help_prints(capsys: pytest.CaptureFixture) -> None:
    commands = _commands()
    assert ["bench"] in commands and ["data", "convert"] in commands
    for path in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0, path
        assert "{'option_strings'" not in out and "usage: densemtl" in out, path
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "with Δm% against single-task baselines" in " ".join(capsys.readouterr().out.split())


def test_version() -> None:
    import densemtl

    r = subprocess.run([sys.executable, "-m", "densemtl", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"densemtl {densemtl.__version__}\n"
    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    latest = next(line.split()[1] for line in changelog.splitlines() if line.startswith("## "))
    assert densemtl.__version__ == latest  # the version the CHANGELOG describes last


def test_workers_get_the_parents_imports(plugdir: Path, tmp_path: Path) -> None:
    """A process started by a command (a bench or speed worker) finds the modules in $DENSEMTL_IMPORTS."""
    code = "from densemtl import models, plugins; plugins.load_pending(); print(models.available())"
    env = {**os.environ, "PYTHONPATH": str(plugdir), plugins.ENV: "myplug,mymethod"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "myarch" in r.stdout, r.stderr
