"""What a plugin registers and what its objects give back: one line naming the plugin, never a
traceback through densemtl.

Registration: an empty name, a name with a comma or a space, a name that is not a string, a
factory that cannot be called. Import: a plugin raising KeyboardInterrupt itself (not a Ctrl-C),
or calling ``sys.exit(0)``; a module name that is a Python identifier but not ASCII (``plügin``).
Outputs, checked where densemtl first reads them: an architecture's forward that returns a tensor,
misses a task, or returns the wrong size or channel count; a method whose weights or update have
the wrong shape, are not a tensor or are NaN; a task whose loss is not a scalar tensor. And
``$DENSEMTL_DIST_TIMEOUT_MIN`` read by ``speed --world-size 2`` before any process starts.

Every plugin here is a module written into the test's own folder; the fixture forgets the modules
and every name they registered, so nothing leaks into another test.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from densemtl import data, methods, models, plugins, tasks
from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.plugin_contracts import check_loss, check_outputs, check_vector
from densemtl.plugin_faults import PluginError

REGISTRIES = (models.MODELS, methods.METHODS, tasks.TASKS, data.DATASETS)
TINY = ["--dataset", "synthetic", "--n-train", "2", "--n-val", "2", "--size", "32x40", "--batch-size", "2"]
TINY += ["--epochs", "1", "--quiet", "--out", "r"]
SEGNET = ["--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
HEAD = "import torch\nfrom torch import nn\nfrom densemtl import data, methods, models\n"
HEAD += "from densemtl.models.segnet import segnet\nfrom densemtl.balancing.base import LossWeighting, Requirements\n"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's folder as the working directory and first on ``sys.path``; afterwards every module
    imported from it is forgotten and every registry is as it was."""
    for reg in REGISTRIES:
        for attr in ("_factories", "_tiny", "_aliases"):
            monkeypatch.setattr(reg, attr, dict(getattr(reg, attr)))
    monkeypatch.setattr(plugins, "_loaded", list(plugins._loaded))
    monkeypatch.delenv(plugins.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(tmp_path) in str(sys.modules[name].__file__):
            del sys.modules[name]
    plugins.end_command()


def _plugin(name: str, body: str) -> Path:
    path = Path.cwd() / f"{name}.py"
    path.write_text(HEAD + textwrap.dedent(body))
    return path


def _line_of(path: Path, text: str) -> int:
    """The 1-based number of the line of ``path`` holding ``text``."""
    return next(i for i, x in enumerate(path.read_text().splitlines(), 1) if text in x)


def _line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("densemtl: warning")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- registration -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("models.register('')(segnet)", "architecture '': a name must not be empty"),
        ("models.register('a,b')(segnet)", "architecture 'a,b': a name must have no commas, spaces"),
        ("methods.register('e w')(LossWeighting)", "method 'e w': a name must have no commas, spaces"),
        ("models.register(7)(segnet)", "architecture 7: a name must be a string, not int"),
        ("data.register('x')(42)", "dataset 'x' as int 42: a dataset must be registered as a function or class"),
    ],
)
def test_a_name_no_command_line_can_give_is_refused_at_registration(
    line: str, why: str, capsys: pytest.CaptureFixture
) -> None:
    path = _plugin("regmod", line + "\n")
    assert main(["list", "--import", "regmod"]) == 2
    got = _line(capsys)
    assert got.startswith(f"densemtl: error: plugin 'regmod' registers {why}") and got.endswith(f" at {path}:6"), got
    assert models.MODELS.find("a,b") is None and data.DATASETS.find("x") is None


def test_the_registration_line_names_the_plugins_file_and_line(capsys: pytest.CaptureFixture) -> None:
    path = _plugin("regmod", "data.register('x')(42)\n")
    assert main(["list", "--import", "regmod"]) == 2
    assert _line(capsys) == (
        "densemtl: error: plugin 'regmod' registers dataset 'x' as int 42: a dataset must be registered as a "
        f"function or class that makes one at {path}:6"
    )


def test_a_unicode_name_is_a_name() -> None:
    _plugin("regmod", "models.register('сеть')(segnet)\n")
    assert main(["list", "--import", "regmod"]) == 0
    assert models.MODELS.find("сеть") == "сеть"


# -- import -----------------------------------------------------------------------------------------
def test_a_keyboardinterrupt_the_plugin_raises_is_the_plugins(capsys: pytest.CaptureFixture) -> None:
    path = _plugin("intmod", "raise KeyboardInterrupt\n")
    assert main(["list", "--import", "intmod"]) == 2
    assert _line(capsys) == (
        f"densemtl: error: plugin 'intmod' raised KeyboardInterrupt at {path}:6 without a Ctrl-C (a bug in the "
        "plugin; DENSEMTL_TRACEBACK=1 shows its traceback)"
    )


def test_a_real_ctrl_c_while_importing_stays_an_interrupt(capsys: pytest.CaptureFixture) -> None:
    import signal

    _plugin("sigmod", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    # Python's own Ctrl-C handler, as in a shell (a pytest-xdist worker ignores SIGINT)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["list", "--import", "sigmod"]) == 130
    finally:
        signal.signal(signal.SIGINT, before)
    assert capsys.readouterr().err == "densemtl: interrupted\n"


def test_sys_exit_0_while_importing_is_said(capsys: pytest.CaptureFixture) -> None:
    path = _plugin("zeromod", "import sys\nsys.exit(0)\n")
    assert main(["list", "--import", "zeromod"]) == 2
    assert _line(capsys) == (
        f"densemtl: error: plugin 'zeromod' ended the process (sys.exit(0)) at {path}:7; a plugin must not exit"
    )


def test_a_module_name_is_any_python_identifier() -> None:
    (Path.cwd() / "plügin.py").write_text("x = 1\n")
    assert main(["list", "--import", "plügin"]) == 0
    assert plugins.is_module_name("a.plügin") and not plugins.is_module_name("plug.")
    assert not plugins.is_module_name("") and not plugins.is_module_name("a-b")


# -- an architecture's outputs ---------------------------------------------------------------------
ARCHS = """
import torch.nn.functional as F


def _wrapped(task_channels, change):
    m = segnet(task_channels, 0.125, 3)
    f = m.forward
    m.forward = lambda x: change(f(x))
    return m


@models.register('astensor')
def astensor(task_channels):
    return _wrapped(task_channels, lambda out: out['seg'])


@models.register('nodepth')
def nodepth(task_channels):
    return _wrapped(task_channels, lambda out: {k: v for k, v in out.items() if k != 'depth'})


@models.register('halfsize')
def halfsize(task_channels):
    return _wrapped(task_channels, lambda out: {k: F.interpolate(v, scale_factor=0.5) for k, v in out.items()})


@models.register('twoseg')
def twoseg(task_channels):
    return segnet({**task_channels, 'seg': 2}, 0.125, 3)
"""


@pytest.mark.parametrize(
    ("arch", "what"),
    [
        ("astensor", "forward returned a tensor of shape (2, 7, 32, 40), not a dict of predictions by task "
         "(seg: (B, 7, H, W), depth: (B, 1, H, W), normal: (B, 3, H, W))"),
        ("nodepth", "forward returned no prediction for task depth (it returned seg, normal; expected seg: "
         "(B, 7, H, W), depth: (B, 1, H, W), normal: (B, 3, H, W))"),
        ("halfsize", "forward returned a tensor of shape (2, 7, 16, 20) for task 'seg'; expected (2, 7, 32, 40), "
         "the image's size"),
        ("twoseg", "forward returned a tensor of shape (2, 2, 32, 40) for task 'seg'; expected (2, 7, 32, 40), "
         "the image's size"),
    ],
)  # fmt: skip
def test_an_architecture_returning_the_wrong_outputs_is_named(
    arch: str, what: str, capsys: pytest.CaptureFixture
) -> None:
    path = _plugin("archmod", ARCHS)
    line = _line_of(path, f"register({arch!r})")
    assert main(["train", "--import", "archmod", "--arch", arch, *TINY]) == 2
    assert _line(capsys) == f"densemtl: error: architecture {arch!r} of plugin 'archmod' ({path}:{line}): {what}"
    assert not Path("r").exists()


def test_an_architecture_without_parameters_is_named(capsys: pytest.CaptureFixture) -> None:
    path = _plugin(
        "zeromod",
        """
        from densemtl.models.base import MultiTaskModel


        class Z(MultiTaskModel):
            has_representation = False

            def forward(self, x):
                return {t: x.new_zeros(x.shape[0], c, *x.shape[-2:]) for t, c in self.task_channels.items()}


        @models.register('zero')
        def zero(task_channels):
            return Z(task_channels)
        """,
    )
    assert main(["train", "--import", "zeromod", "--arch", "zero", *TINY]) == 2
    assert _line(capsys) == (
        f"densemtl: error: architecture 'zero' of plugin 'zeromod' ({path}:{_line_of(path, 'register(')}) has no "
        "trainable parameters; a model to train needs at least one"
    )
    assert not Path("r").exists()


def test_densemtls_own_models_are_not_checked_here() -> None:
    """A bug of densemtl's own stays a traceback: the checks look only at the user's objects."""
    model = models.create("segnet", {"seg": 7}, width=0.125, depth_stages=3)
    check_outputs(model, torch.zeros(1), {"image": torch.zeros(1, 3, 8, 8)}, ("seg",))


# -- a method's weights and update ------------------------------------------------------------------
METHODS = """
from densemtl.balancing.base import Aggregator


class W(LossWeighting):
    requirements = Requirements(sources=('losses',))
    make = None

    def weights(self, losses):
        return self.make(losses)


@methods.register('longer')
class Longer(W):
    make = staticmethod(lambda losses: torch.ones(len(losses) + 1))


@methods.register('listed')
class Listed(W):
    make = staticmethod(lambda losses: [1.0] * len(losses))


@methods.register('nanw')
class NanW(W):
    make = staticmethod(lambda losses: torch.full_like(losses, float('nan')))


@methods.register('shortagg')
class ShortAgg(Aggregator):
    requirements = Requirements(sources=('jacobian',))

    def aggregate(self, J):
        return J.sum(dim=0)[:-1]
"""


@pytest.mark.parametrize(
    ("method", "what"),
    [
        ("longer", "weights(losses) returned a tensor of shape (4,), not a floating-point tensor of shape (3,)"),
        ("listed", "weights(losses) returned a list, not a floating-point tensor of shape (3,)"),
        ("nanw", "weights(losses) returned non-finite values ([nan, nan, nan]…)"),
        ("shortagg", "aggregate(J) returned a tensor of shape (P-1,)"),
    ],
)
def test_a_method_returning_the_wrong_weights_is_named(method: str, what: str, capsys: pytest.CaptureFixture) -> None:
    path = _plugin("methmod", METHODS)
    line = _line_of(path, f"register({method!r})")
    assert main(["train", "--import", "methmod", "--method", method, *TINY, *SEGNET]) == 2
    got = _line(capsys)
    head = f"densemtl: error: method {method!r} of plugin 'methmod' ({path}:{line}): "
    assert got.startswith(head), got
    if method == "shortagg":
        assert "aggregate(J) returned a tensor of shape (" in got and "not a floating-point tensor of shape (" in got
    else:
        assert got == head + what
    assert not Path("r").exists()


def test_the_checks_pass_densemtls_own_methods_and_good_values() -> None:
    ew = methods.create("ew")
    check_vector(ew, "weights(losses)", [1.0], 3)  # densemtl's own: not checked here
    check_loss(tasks.create("seg"), "seg", torch.zeros(3))


# -- a task's loss ----------------------------------------------------------------------------------
class VectorLoss(tasks.TASKS.get("depth")):  # type: ignore[misc]
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean(dim=(1, 2, 3))


class FloatLoss(tasks.TASKS.get("depth")):  # type: ignore[misc]
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> float:  # type: ignore[override]
        return 1.0


@pytest.mark.parametrize(
    ("cls", "what"),
    [(VectorLoss, "a tensor of shape (2,)"), (FloatLoss, "a float")],
)
def test_a_task_whose_loss_is_not_a_scalar_is_named(cls: type, what: str) -> None:
    tasks.TASKS.register("vloss")(cls)
    pred, target = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4) + 0.5
    with pytest.raises(PluginError) as e:
        tasks.compute_losses({"vloss": pred}, {"vloss": target}, ["vloss"])
    assert str(e.value).startswith(f"task 'vloss' of plugin {__name__!r} ({__file__}:")
    assert str(e.value).endswith(f"): loss() returned {what}, not a scalar floating-point tensor")


@pytest.mark.parametrize("channels", [0, "one", True])
def test_a_task_with_no_channels_is_named(channels: object) -> None:
    class NoChannels(tasks.TASKS.get("depth")):  # type: ignore[misc, name-defined]
        def channels(self, num_classes: int) -> object:
            return channels

    tasks.TASKS.register("nochan")(NoChannels)
    with pytest.raises(ConfigError) as e:
        tasks.task_channels(["seg", "nochan"], 7)
    assert str(e.value).startswith(f"task 'nochan' of plugin {__name__!r} ({__file__}:")
    assert str(e.value).endswith(f"): channels(7) returned {channels!r}, not a number of channels >= 1")


def test_a_task_without_a_direction_for_its_primary_metric_is_named() -> None:
    class NoDirection(tasks.TASKS.get("depth")):  # type: ignore[misc, name-defined]
        lower_is_better: dict[str, bool] = {}

    tasks.TASKS.register("nodir")(NoDirection)
    with pytest.raises(PluginError, match=r"does not follow the task protocol: its 'lower_is_better' gives no "
                       r"direction \(True or False\) for its primary metric 'abs_err'"):  # fmt: skip
        tasks.create("nodir")


def test_a_task_whose_accumulator_is_none_is_named() -> None:
    from densemtl.metrics import StreamingMetrics

    class NoAccumulator(tasks.TASKS.get("depth")):  # type: ignore[misc, name-defined]
        def accumulator(self, num_classes: int) -> None:  # type: ignore[override]
            return None

    tasks.TASKS.register("noacc")(NoAccumulator)
    with pytest.raises(PluginError, match=r"accumulator\(\) returned None, not a metric accumulator"):
        StreamingMetrics(["seg", "noacc"], 7)


def test_a_dataset_without_classes_for_seg_is_named(capsys: pytest.CaptureFixture) -> None:
    _plugin(
        "dsmod",
        """
        @data.register('noclasses')
        def noclasses(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
            ds = data.create('synthetic', split, size=size, n=2)
            ds.num_classes = 0
            return ds
        """,
    )
    assert main(["train", "--import", "dsmod", *TINY, "--dataset", "noclasses"]) == 2
    assert _line(capsys) == (
        "densemtl: error: dataset 'noclasses' says it has num_classes=0; it must be a whole number >= 1"
    )


def test_a_dataset_whose_samples_raise_is_named(capsys: pytest.CaptureFixture) -> None:
    path = _plugin(
        "dsmod",
        """
        class Broken:
            tasks, num_classes = ('seg',), 7

            def __len__(self):
                return 2

            def __getitem__(self, i):
                raise IndexError(i)


        @data.register('broken')
        def broken(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
            return Broken()
        """,
    )
    assert main(["train", "--import", "dsmod", *TINY, "--dataset", "broken"]) == 2
    assert _line(capsys) == (
        f"densemtl: error: dataset 'broken' of plugin 'dsmod' ({path}:{_line_of(path, 'register(')}): dataset[0] "
        f"raised IndexError: 0 at {path}:{_line_of(path, 'raise IndexError')} (a bug in the plugin; "
        "DENSEMTL_TRACEBACK=1 shows its traceback)"
    )


# -- $DENSEMTL_DIST_TIMEOUT_MIN --------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-5", "nan", "abc"])
def test_speed_with_two_processes_reads_the_timeout_first(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from densemtl import distributed

    monkeypatch.setenv("DENSEMTL_DIST_TIMEOUT_MIN", value)
    monkeypatch.setattr(distributed, "spawn", lambda *a, **k: pytest.fail("spawned"))
    argv = ["speed", "--methods", "ew", "--size", "32x40", "--batch-size", "2", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--quiet", "--world-size", "2", *SEGNET]) == 2
    assert _line(capsys) == f"densemtl: error: DENSEMTL_DIST_TIMEOUT_MIN must be a number of minutes > 0, got {value!r}"


def test_spawn_reads_the_timeout_before_starting_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from densemtl import distributed
    from densemtl.errors import ConfigError

    monkeypatch.setenv("DENSEMTL_DIST_TIMEOUT_MIN", "-5")
    monkeypatch.setattr(distributed.mp, "get_context", lambda *a: pytest.fail("a process was started"))
    with pytest.raises(ConfigError, match="DENSEMTL_DIST_TIMEOUT_MIN"):
        distributed.spawn(print, 2)
