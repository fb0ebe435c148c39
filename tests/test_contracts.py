"""Extension contracts that fail loudly and at the right place (issue 22).

A method's declaration is checked against its class when the class is defined; the engine's modes
are also named by their sources; a model whose parameters do not split into shared and per-task
ones is refused when an Engine is built; a factory's knobs are checked against its signature
before the call, so a TypeError inside a plugin's factory is the plugin's bug, not a bad knob; a
name registered twice is a typed error; and the CLI names a plugin's file and line for any
exception raised in its code, with the full traceback under ``DENSEMTL_TRACEBACK=1``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import densemtl
from densemtl import plugins
from densemtl.balancing.base import (
    Aggregator,
    GramianWeighting,
    LossWeighting,
    OptimizerMethod,
    Requirements,
    protocol_gap,
)
from densemtl.cli.main import main
from densemtl.engine import Engine
from densemtl.engine.modes import MODE_ALIASES, check_mode
from densemtl.errors import ConfigError
from densemtl.models.base import MultiTaskModel
from densemtl.plugin_faults import PluginError, call_factory
from densemtl.registry import DuplicateName, Registry

CH = {"seg": 3, "depth": 1}


@pytest.fixture
def tiny_model() -> MultiTaskModel:
    torch.manual_seed(0)
    return densemtl.models.create("segnet", CH, **densemtl.models.MODELS.tiny("segnet"))


@pytest.fixture
def tiny_batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(2, 3, 16, 16, generator=g),
        "seg": torch.randint(-1, 3, (2, 16, 16), generator=g),
        "depth": torch.rand(2, 1, 16, 16, generator=g) + 0.5,
    }


# -- declarations, at class definition ---------------------------------------------------------------
def _agg(self: Aggregator, J: Tensor) -> Tensor:
    return J.sum(0)


@pytest.mark.parametrize(
    ("base", "body", "message"),
    [
        (Aggregator, {"requirements": Requirements(sources=("gramian",)), "aggregate": _agg},
         "Bad: declares sources=('gramian',) but does not define weights_from_gramian(G), which the 'gramian' "
         "source calls; subclass densemtl.balancing.base.GramianWeighting"),
        (Aggregator, {"requirements": Requirements(sources=("jacobian", "gramian"))},
         "does not define weights_from_gramian(G)"),
        (Aggregator, {"requirements": Requirements(sources=("losses",))},
         "Bad: declares sources=('losses',) but has no combine(losses); subclass "
         "densemtl.balancing.base.LossWeighting"),
        (LossWeighting, {"requirements": Requirements(sources=("jacobian",))},
         "Bad: declares sources=('jacobian',) but is a LossWeighting"),
        (Aggregator, {"requirements": Requirements(sources=("rows",)), "aggregate": _agg},
         "Bad: declares sources=('rows',) but does not override add_row(t, g) and finish_rows()"),
        (LossWeighting, {"requirements": Requirements(sources=("losses",), layer_grad_norms="auto")},
         "Bad: declares layer_grad_norms='auto' but does not override observe_grad_norms(norms)"),
        (LossWeighting, {"requirements": Requirements(sources=("losses",), reevaluate=True)},
         "Bad: declares reevaluate=True but does not override observe_losses_after_step(losses)"),
        (OptimizerMethod, {"requirements": Requirements(sources=("rows",), coordinate_state=True, optimizer="sgd")},
         "does not override add_row(t, g) and finish_rows()"),
    ],
)  # fmt: skip
def test_a_bad_declaration_is_refused_when_the_class_is_defined(base: type, body: dict, message: str) -> None:
    with pytest.raises(TypeError) as got:
        type("Bad", (base,), dict(body))
    text = str(got.value)
    assert text.count("\n") == 0 and message in text, text
    assert text.startswith(f"{__name__}.Bad: ") or "Bad: " in text  # names the class


def test_a_good_declaration_defines() -> None:
    class Fine(GramianWeighting):
        requirements = Requirements(sources=("gramian", "jacobian"))

        def weights_from_gramian(self, G: Tensor) -> Tensor:
            return torch.ones(len(G))

    class Norms(LossWeighting):
        requirements = Requirements(sources=("losses",), layer_grad_norms="auto")

        def observe_grad_norms(self, norms: Tensor) -> None:
            self.norms = norms

        def weights(self, losses: Tensor) -> Tensor:
            return torch.ones_like(losses)

    assert protocol_gap(Fine()) == "" and protocol_gap(Norms()) == ""


def test_every_registered_method_imports_and_honours_its_declaration() -> None:
    names = densemtl.methods.available()
    assert len(names) >= 20
    for name in names:  # an instance's own declaration (GradNorm, FAMO, DB-MTL) too
        method = densemtl.methods.METHODS.get(name)(**densemtl.methods.METHODS.tiny(name))
        assert protocol_gap(method) == "", name


def test_an_instance_declaration_is_checked_when_the_engine_is_built(tiny_model: MultiTaskModel) -> None:
    class Later(LossWeighting):
        def __init__(self) -> None:
            super().__init__()
            self.requirements = Requirements(sources=("losses",), reevaluate=True)

        def weights(self, losses: Tensor) -> Tensor:
            return torch.ones_like(losses)

    with pytest.raises(ConfigError, match="^Engine: method Later: declares reevaluate=True but does not override"):
        Engine(tiny_model, Later(), tiny_model.tasks)


# -- modes named as sources -----------------------------------------------------------------------------
def test_each_source_name_is_its_modes_alias(tiny_model: MultiTaskModel) -> None:
    assert MODE_ALIASES == {"losses": "loss", "jacobian": "parameters", "rows": "parameters"}
    pcgrad, ew = densemtl.methods.create("pcgrad"), densemtl.methods.create("ew")
    assert check_mode(pcgrad, "jacobian", has_representation=True) == "parameters"
    assert check_mode(ew, "losses", has_representation=True) == "loss"
    assert Engine(tiny_model, pcgrad, tiny_model.tasks, mode="jacobian").mode == "parameters"
    with pytest.raises(ConfigError, match=r"valid: loss \(losses\), representation, gramian, parameters \(jacobian"):
        check_mode(pcgrad, "fast", has_representation=True)
    with pytest.raises(ConfigError, match="^--grad-mode jacobian: EqualWeighting is a loss weighting"):
        check_mode(ew, "jacobian", has_representation=True)


def test_jacobian_and_parameters_give_the_same_step(tiny_model: MultiTaskModel, tiny_batch: dict) -> None:
    grads = []
    for mode in ("parameters", "jacobian"):
        torch.manual_seed(0)
        Engine(tiny_model, densemtl.methods.create("upgrad"), tiny_model.tasks, mode=mode).step(tiny_batch)
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


# -- the shared/task split, when a run starts ---------------------------------------------------------------
class NoHeads(MultiTaskModel):
    """Heads kept as ``self.decoders``: task_parameters finds none."""

    def __init__(self, task_channels: dict[str, int]) -> None:
        super().__init__(task_channels)
        self.trunk = nn.Conv2d(3, 4, 3, padding=1)
        self.decoders = nn.ModuleDict({t: nn.Conv2d(4, c, 1) for t, c in task_channels.items()})

    def encode(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def decode(self, rep: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        return {t: h(rep) for t, h in self.decoders.items()}


class Both(NoHeads):
    """Heads as ``self.heads``, but the trunk listed as shared and as the first task's."""

    def __init__(self, task_channels: dict[str, int]) -> None:
        super().__init__(task_channels)
        self.heads = self.decoders

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        own = list(self.heads[task].parameters())
        return [*self.trunk.parameters(), *own] if task == self.tasks[0] else own

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


class Twice(Both):
    """The trunk owned by two tasks."""

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return [*self.trunk.parameters(), *self.heads[task].parameters()]


def test_a_model_whose_heads_are_not_self_heads_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^NoHeads: no task owns a parameter \(task_parameters gives none: name "):
        Engine(NoHeads(CH), densemtl.methods.create("ew"), ("seg", "depth"))


def test_a_parameter_both_shared_and_owned_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^Both: 2 parameter\(s\) both shared .* owned by task 'seg'"):
        Engine(Both(CH), densemtl.methods.create("ew"), ("seg", "depth"))
    with pytest.raises(ConfigError, match="^Twice: a parameter is owned by both task 'seg' and task 'depth'"):
        Engine(Twice(CH), densemtl.methods.create("ew"), ("seg", "depth"))


def test_every_architecture_splits() -> None:
    for name in densemtl.models.available():
        try:
            model = densemtl.models.create(name, CH, **densemtl.models.MODELS.tiny(name))
        except ConfigError:  # timm not installed
            continue
        Engine(model, densemtl.methods.create("ew"), model.tasks)


# -- factories: knobs checked before the call, a TypeError inside is the plugin's --------------------------
def _plugin_factory() -> object:
    """A factory that looks like a plugin's (its module is not densemtl's)."""
    src = "def make(task_channels, width: int = 4):\n    return len(width)\n"
    ns: dict = {"__name__": "someplug"}
    exec(compile(src, "/plug/someplug.py", "exec"), ns)  # noqa: S102 - a made-up plugin's code
    return ns["make"]


def test_a_type_error_inside_a_plugin_factory_is_the_plugins_bug() -> None:
    make = _plugin_factory()
    with pytest.raises(
        PluginError, match=r"raised TypeError: object of type 'int' has no len\(\) at /plug/someplug.py:2"
    ):
        call_factory("architecture", "p", make, {"task_channels": CH})  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"^architecture 'p' has no knob 'widht' \(did you mean 'width'\?\); valid: width$"
    ):
        call_factory("architecture", "p", make, {"task_channels": CH, "widht": 3})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="^architecture 'p': missing a required argument: 'task_channels'"):
        call_factory("architecture", "p", make, {})  # type: ignore[arg-type]


def test_a_name_registered_twice_is_a_typed_error() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("a")(dict)
    with pytest.raises(DuplicateName) as got:
        reg.register("A")(list)
    assert (got.value.kind, got.value.name) == ("widget", "a")


# -- the CLI: a plugin's bug anywhere, with its file and line ---------------------------------------------
BUGGY = """from torch import nn
import densemtl
from densemtl.models.base import MultiTaskModel


class Net(MultiTaskModel):
    def __init__(self, task_channels, width: int = 4):
        super().__init__(task_channels)
        self.trunk = nn.Conv2d(3, width, 3, padding=1)
        self.heads = nn.ModuleDict({t: nn.Conv2d(width, c, 1) for t, c in task_channels.items()})

    def encode(self, x):
        return self.trunk(undefined_name)

    def decode(self, rep, size):
        return {t: h(rep) for t, h in self.heads.items()}


@densemtl.models.register("bugnet")
def make(task_channels, width: int = 4):
    return Net(task_channels, width)
"""
RUN = ["--epochs", "1", "--size", "16x16", "--n-train", "2", "--n-val", "2", "--batch-size", "2", "--quiet"]


@pytest.fixture
def buggy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", list(plugins._loaded))
    monkeypatch.delenv(plugins.ENV, raising=False)
    (tmp_path / "bugplug.py").write_text(BUGGY)
    yield tmp_path / "bugplug.py"
    sys.modules.pop("bugplug", None)
    if densemtl.models.MODELS.find("bugnet"):
        densemtl.models.MODELS.unregister("bugnet")
    plugins.end_command()


def test_a_name_error_in_a_plugins_forward_names_its_file_and_line(
    buggy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("DENSEMTL_TRACEBACK", raising=False)
    assert main(["train", "--import", "bugplug", "--arch", "bugnet", *RUN, "--out", "r"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"densemtl: error: plugin 'bugplug' raised NameError: name 'undefined_name' is not defined at {buggy}:13 "
        "(a bug in the plugin; DENSEMTL_TRACEBACK=1 shows its traceback)"
    )
    assert not any(line.startswith("Traceback") for line in err)
    monkeypatch.setenv("DENSEMTL_TRACEBACK", "1")
    assert main(["train", "--import", "bugplug", "--arch", "bugnet", *RUN, "--out", "r2"]) == 2
    err2 = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err2 and f'File "{buggy}", line 13, in encode' in err2
    assert err2.splitlines()[-1] == err[-1]


def test_the_traceback_switch_shows_any_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("DENSEMTL_TRACEBACK", "1")
    assert main(["train", "--arch", "segnet", "--arch-arg", "widht=1", *RUN, "--out", "r"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "registry.py" in err
    assert err.splitlines()[-1].startswith("densemtl: error: architecture 'segnet' has no knob 'widht'")
