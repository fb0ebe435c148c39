"""No file densemtl reads makes it import anything without a flag on the command line.

A planted module (``plantmod``, in the working directory) writes ``planted-ran`` when imported.
Named by a run's config.yaml, a ``.pt`` checkpoint, an exported ``.safetensors``'s metadata, a
``--config`` file, a bench grid or a bench folder, it is refused in one line (exit 2, nothing
imported) until ``--import plantmod`` or ``--trust-imports`` allows it; ``imports: [this]`` never
prints the Zen of Python without one. Also: ``load_run``'s ``trust_imports``, ``$DENSEMTL_IMPORTS``
naming what does not import, and a plugin's failures in one line (``DENSEMTL_TRACEBACK=1``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import densemtl
from densemtl import models, plugins
from densemtl.cli.main import main
from densemtl.errors import ConfigError

PLANT = "from pathlib import Path\n\nPath('planted-ran').write_text('imported')\n"
MARK = "planted-ran"
ZEN = "Beautiful is better than ugly"
TINY = ["--size", "32x40", "--n-train", "4", "--n-val", "2", "--batch-size", "2", "--quiet"]
TINY += ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
EVAL = ["--n", "2", "--batch-size", "2"]


OURS = ("plantmod", "this", "failmod", "exitmod", "deepmod")


def _forget() -> None:
    """As if this process had never imported our modules (nor run a command)."""
    for name in OURS:
        sys.modules.pop(name, None)
    plugins._loaded[:] = [n for n in plugins._loaded if n not in OURS]
    plugins.end_command()


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No imported module, consent or $DENSEMTL_IMPORTS leaks into another test."""
    monkeypatch.setattr(plugins, "_loaded", list(plugins._loaded))
    monkeypatch.delenv(plugins.ENV, raising=False)
    monkeypatch.delenv("DENSEMTL_TRACEBACK", raising=False)
    _forget()
    yield
    _forget()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained with ``--import plantmod`` (recorded in its config.yaml and checkpoints),
    and its export ``shared.safetensors``, in a folder holding ``plantmod.py``."""
    root = tmp_path_factory.mktemp("trust")
    (root / "plantmod.py").write_text(PLANT)
    old = Path.cwd()
    import os

    os.chdir(root)
    try:
        assert main(["train", "--import", "plantmod", "--epochs", "0", *TINY, "--out", "run"]) == 0
        assert main(["export", "--checkpoint", "run", "--out", "shared.safetensors", "--import", "plantmod"]) == 0
    finally:
        os.chdir(old)
        _forget()
    (root / MARK).unlink()
    return root


@pytest.fixture
def work(made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of ``made`` as the working directory."""
    import shutil

    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(argv: list[str], capsys: pytest.CaptureFixture, *names: str) -> str:
    """``main(argv)`` refuses in one line naming ``names``; the planted module did not run."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("densemtl: error: "), err
    assert "names plugin module" in err and "--trust-imports" in err, err
    for n in names:
        assert n in err and f"--import {n}" in err, err
    assert not Path(MARK).exists() and ZEN not in out
    return err


def _ran(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 0, capsys.readouterr().err
    assert Path(MARK).is_file()
    Path(MARK).unlink()
    _forget()


def test_run_config(work: Path, capsys: pytest.CaptureFixture) -> None:
    err = _refused(["eval", "--checkpoint", "run", "--json", "m.json", *EVAL], capsys, "plantmod")
    assert "run/config.yaml names plugin module plantmod (the run was trained with them)" in err
    assert not Path("m.json").exists()
    _ran(["eval", "--checkpoint", "run", "--import", "plantmod", *EVAL], capsys)
    _ran(["eval", "--checkpoint", "run", "--trust-imports", *EVAL], capsys)
    # resume: the run's config.yaml again
    err = _refused(["train", "--resume", "--out", "run", "--epochs", "1"], capsys, "plantmod")
    assert "(the run used them)" in err


def test_pt_checkpoint(work: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    np.save("x.npy", np.random.default_rng(0).random((32, 40, 3), dtype=np.float32))
    Path("solo.pt").write_bytes(Path("run/checkpoints/last.pt").read_bytes())  # no config.yaml beside it
    err = _refused(["predict", "--checkpoint", "solo.pt", "x.npy", "--out", "p"], capsys, "plantmod")
    assert err.startswith("densemtl: error: solo.pt names plugin module plantmod")
    assert not Path("p").exists()
    _ran(["predict", "--checkpoint", "solo.pt", "x.npy", "--out", "p", "--trust-imports"], capsys)
    # a run whose config.yaml says nothing, and whose last.pt names a module: the file loaded is read
    cfg = Path("run/config.yaml")
    cfg.write_text(cfg.read_text().replace("- plantmod", "").replace("imports:\n", "imports: []\n"))
    assert "plantmod" not in cfg.read_text()
    err = _refused(["export", "--checkpoint", "run", "--out", "e.safetensors"], capsys, "plantmod")
    assert "run/checkpoints/last.pt names plugin module plantmod" in err and not Path("e.safetensors").exists()


def test_safetensors(work: Path, capsys: pytest.CaptureFixture) -> None:
    err = _refused(["eval", "--checkpoint", "shared.safetensors", *EVAL], capsys, "plantmod")
    assert "shared.safetensors names plugin module plantmod" in err
    _ran(["eval", "--checkpoint", "shared.safetensors", "--import", "plantmod", *EVAL], capsys)
    with pytest.raises(ConfigError, match=r"names plugin module plantmod .*trust_imports=True"):
        densemtl.load_run("shared.safetensors")
    with pytest.raises(ConfigError, match="names plugin module plantmod"):
        densemtl.from_checkpoint(work / "run")
    assert not Path(MARK).exists()
    run = densemtl.load_run("shared.safetensors", trust_imports=True)
    assert Path(MARK).is_file() and run.tasks == ("seg", "depth", "normal")
    Path(MARK).unlink()
    assert densemtl.load_run(work / "run").tasks == run.tasks  # now imported: nothing more to consent to
    assert not Path(MARK).exists()


def _plain_run_with(imports: str) -> None:
    cfg = Path("run/config.yaml")
    cfg.write_text(cfg.read_text().replace("- plantmod", f"- {imports}"))
    state = torch.load("run/checkpoints/last.pt", map_location="cpu", weights_only=True)
    state["config"]["imports"] = [imports]
    torch.save(state, "run/checkpoints/last.pt")


def test_this(work: Path, capsys: pytest.CaptureFixture) -> None:
    """``imports: [this]`` needs no planted file: it prints the Zen of Python when imported."""
    Path("c.yaml").write_text("imports: [this]\nepochs: -1\n")
    err = _refused(["train", "--config", "c.yaml"], capsys, "this")
    assert "--config c.yaml names plugin module this (its imports:)" in err
    _plain_run_with("this")
    _refused(["eval", "--checkpoint", "run", *EVAL], capsys, "this")
    _refused(["predict", "--checkpoint", "run/checkpoints/last.pt", "x.npy", "--out", "p"], capsys, "this")
    # allowed: imported (the Zen printed), then the config's own mistake
    assert main(["train", "--config", "c.yaml", "--import", "this"]) == 2
    out, err = capsys.readouterr()
    assert ZEN in out and "epochs" in err


def test_config_file(work: Path, capsys: pytest.CaptureFixture) -> None:
    Path("c.yaml").write_text("imports: [plantmod]\nepochs: -1\n")
    _refused(["train", "--config", "c.yaml", *TINY], capsys, "plantmod")
    assert not Path("runs").exists()
    assert main(["train", "--config", "c.yaml", "--trust-imports", *TINY]) == 2  # imported, then epochs refused
    assert Path(MARK).is_file() and "epochs" in capsys.readouterr().err


def test_bench_grid_and_folder(work: Path, capsys: pytest.CaptureFixture) -> None:
    Path("g.yaml").write_text("imports: [plantmod]\narchs: [nosucharch]\n")
    err = _refused(["bench", "--grid", "g.yaml", "--out", "b"], capsys, "plantmod")
    assert "--grid g.yaml names plugin module plantmod" in err and not Path("b").exists()
    assert main(["bench", "--grid", "g.yaml", "--out", "b", "--import", "plantmod"]) == 2  # imported, then the arch
    assert Path(MARK).is_file() and "nosucharch" in capsys.readouterr().err
    Path(MARK).unlink()
    _forget()
    Path("old").mkdir()
    Path("old/bench.yaml").write_text("base:\n  imports: [plantmod]\n")
    err = _refused(["bench", "--out", "old", "--archs", "nosucharch"], capsys, "plantmod")
    assert "old/bench.yaml names plugin module plantmod (the bench used them)" in err
    assert main(["bench", "--out", "old", "--archs", "nosucharch", "--trust-imports"]) == 2
    assert Path(MARK).is_file() and "nosucharch" in capsys.readouterr().err


def _build(cfg: densemtl.TrainConfig) -> None:
    """``Trainer(cfg)``, which imports the config's plugins first; its dataset does not exist, so
    it stops right after (a ConfigError naming the dataset)."""
    with pytest.raises(ConfigError, match="nosuchdata"):
        densemtl.Trainer(cfg, "r")


def test_python_config_is_consent(work: Path) -> None:
    """A config built in the user's own code imports what it names where the run is built (the
    Trainer): that code is the consent. The config alone imports nothing."""
    cfg = densemtl.TrainConfig(imports=["plantmod"], dataset="nosuchdata")
    assert not Path(MARK).exists()
    _build(cfg)
    assert Path(MARK).is_file()


def test_a_config_read_later_is_refused_too(work: Path) -> None:
    """While a command runs, a config naming a module its command line did not allow is refused
    where the run is built, wherever it was read (the check behind the files' own)."""
    from densemtl.cli.imports import consent

    consent(type("Args", (), {})())
    cfg = densemtl.TrainConfig(imports=["plantmod"], dataset="nosuchdata")
    with pytest.raises(ConfigError, match="the config names plugin module plantmod"):
        densemtl.Trainer(cfg, "r")
    assert not Path(MARK).exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nosuchmod_xyz", "$DENSEMTL_IMPORTS names 'nosuchmod_xyz': plugin 'nosuchmod_xyz' failed to import"),
        ("./evil.py", "$DENSEMTL_IMPORTS names './evil.py', not a module name"),
        ("/tmp/x", "$DENSEMTL_IMPORTS names '/tmp/x', not a module name"),
    ],
)
def test_env_imports_that_do_not_import(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv(plugins.ENV, value)
    monkeypatch.setattr(plugins, "_pending_done", False)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_env_imports_load(work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A worker's parent consented: the modules $DENSEMTL_IMPORTS names are imported."""
    monkeypatch.setenv(plugins.ENV, "plantmod")
    monkeypatch.setattr(plugins, "_pending_done", False)
    _ran(["list"], capsys)


# -- a plugin's failures ---------------------------------------------------------------------------
FAIL = """from densemtl import methods, models
from densemtl.balancing.base import Aggregator, BalancingMethod


@models.register("failnone")
def failnone(task_channels: dict, width: float = 1.0) -> None:
    return None


@models.register("failvalue")
def failvalue(task_channels: dict, width: float = 1.0) -> None:
    raise ValueError("width must be even")


@models.register("failtype")
def failtype(task_channels: dict, width: float = 1.0) -> None:
    return len(width)


@methods.register("failproto")
class FailProto:
    pass


@methods.register("failnoagg")
class FailNoAgg(Aggregator):
    pass


@methods.register("failhalf")
class FailHalf(BalancingMethod):
    pass
"""


@pytest.fixture
def failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # this test's failmod.py, not an earlier test's
    (tmp_path / "failmod.py").write_text(FAIL)
    yield tmp_path / "failmod.py"
    for name in ("failnone", "failvalue", "failtype"):
        if models.MODELS.find(name):
            models.MODELS.unregister(name)
    for name in ("failproto", "failnoagg", "failhalf"):
        if densemtl.methods.METHODS.find(name):
            densemtl.methods.METHODS.unregister(name)


def test_every_built_in_method_follows_the_protocol() -> None:
    """What a plugin's method is held to, every method of densemtl's own meets."""
    from densemtl.balancing.base import protocol_gap

    for name in densemtl.methods.available():
        method = densemtl.methods.METHODS.get(name)(**densemtl.methods.METHODS.tiny(name))
        assert protocol_gap(method) == "", name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--arch", "failnone"], "architecture 'failnone' of plugin 'failmod' (FILE:5) returned None, not a "
         "densemtl.models.base.MultiTaskModel; an architecture factory must return one"),
        (["--arch", "failvalue"], "architecture 'failvalue' of plugin 'failmod' raised ValueError: width must be even "
         "at FILE:12 (a bug in the plugin; DENSEMTL_TRACEBACK=1 shows its traceback)"),
        (["--arch", "failtype"], "architecture 'failtype' of plugin 'failmod' raised TypeError: object of type "
         "'float' has no len() at FILE:17"),
        (["--arch", "failtype", "--arch-arg", "depth=2"], "architecture 'failtype' has no knob 'depth'"),
        (["--method", "failproto"], "method 'failproto' of plugin 'failmod' (FILE:20) returned a FailProto, not a "
         "densemtl.balancing.base.BalancingMethod"),
        (["--method", "failnoagg"], "method 'failnoagg' of plugin 'failmod' (FILE:25) does not follow the method "
         "protocol: an Aggregator must define aggregate(J)"),
        (["--method", "failhalf"], "method 'failhalf' of plugin 'failmod' (FILE:30) does not follow the method "
         "protocol: it declares no 'requirements'"),
    ],
)  # fmt: skip
def test_plugin_failures(flags: list[str], message: str, failing: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--import", "failmod", *flags, "--epochs", "0", *TINY[:8], "--out", "r"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and message.replace("FILE", str(failing)) in err, err
    assert not Path("r").exists()


def test_traceback_switch(failing: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--import", "failmod", "--arch", "failvalue", "--epochs", "0", *TINY[:8], "--out", "r"]
    monkeypatch.setenv("DENSEMTL_TRACEBACK", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and f'File "{failing}", line 12' in err
    assert err.splitlines()[-1].startswith("densemtl: error: architecture 'failvalue' of plugin 'failmod' raised")


def test_plugin_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exitmod.py").write_text("import sys\n\nsys.exit(3)\n")
    assert main(["list", "--import", "exitmod"]) == 2
    err = capsys.readouterr().err
    assert err == f"densemtl: error: plugin 'exitmod' ended the process (sys.exit(3)) at {tmp_path}/exitmod.py:3; " \
        "a plugin must not exit\n"  # fmt: skip


def test_a_plugin_calling_a_library_is_located_in_its_own_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The line is the plugin's own, not the library frame that raised."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "deepmod.py").write_text("import json\n\njson.loads('{')\n")
    assert main(["list", "--import", "deepmod"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'deepmod' failed to import: JSONDecodeError:" in err and f"at {tmp_path}/deepmod.py:3" in err, err


def test_a_command_hands_its_imports_to_its_children_only(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``$DENSEMTL_IMPORTS`` names the command's modules while it runs, and is put back after it
    (an in-process caller's next command, or a process it starts later, does not inherit them)."""
    import os

    from densemtl.cli import list_cmd

    seen: list[str | None] = []
    monkeypatch.setattr(list_cmd, "run", lambda args: seen.append(os.environ.get(plugins.ENV)) or 0)
    assert main(["list", "--import", "plantmod"]) == 0
    assert seen == ["plantmod"] and plugins.ENV not in os.environ
