"""Every registered architecture, at the tiny knobs it declares once at its ``@register`` line.

The contract of ``MultiTaskModel``: predictions for every task at the input size, shared and
task parameters that partition the model, task parameters that reach their own task's loss
only, every parameter trained, ``decode(encode(x)) == forward(x)`` where there is a single
shared representation, and the same model from the same seed. The checks are
:mod:`densemtl.testing`'s, the kit a plugin author runs on their own architecture. Architecture-specific behaviour
is tested in ``test_models_<arch>.py``.
"""

from __future__ import annotations

import pytest
import torch

from densemtl.errors import ConfigError
from densemtl.models import MODELS, available, count_parameters, create
from densemtl.models.base import MultiTaskModel
from densemtl.tasks import default_task_channels
from densemtl.testing import architectures as conformance

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
ARCHS = available()


def build(name: str, tasks: dict[str, int] = NYU, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return create(name, tasks, **MODELS.tiny(name))


def test_every_architecture_declares_tiny_knobs() -> None:
    assert ARCHS
    for name in ARCHS:
        assert MODELS.tiny(name), f"{name} declares no tiny test knobs at its @register line"


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (32, 48)), (CITY, (40, 56)), ({"depth": 1}, (33, 47))])
def test_predictions_for_every_task_at_input_size(name: str, tasks: dict[str, int], size: tuple[int, int]) -> None:
    conformance.check_predictions(build(name, tasks), name, tasks, size)


@pytest.mark.parametrize("name", ARCHS)
def test_shared_and_task_parameters_partition_the_model(name: str) -> None:
    model = build(name)
    every, shared, _ = conformance.check_partition(model, name)
    assert bool(shared) == (name != "single")  # only the single-task baseline shares nothing
    counts = count_parameters(model)
    assert counts == {
        "shared": sum(p.numel() for p in model.shared_parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }


@pytest.mark.parametrize("name", ARCHS)
def test_every_parameter_gets_a_gradient_and_task_parameters_only_their_own(name: str) -> None:
    """The engine's premise: L_t (with its extra loss) has no gradient in another task's parameters."""
    conformance.check_gradients(build(name), name, NYU, (32, 48))


@pytest.mark.parametrize("name", ARCHS)
def test_decode_of_encode_is_forward(name: str) -> None:
    """Where there is one shared representation, the heads act on it with task parameters only."""
    conformance.check_representation(build(name), name, NYU, (32, 48))


@pytest.mark.parametrize("name", ARCHS)
def test_same_seed_same_model(name: str) -> None:
    conformance.check_seeded(lambda seed: build(name, seed=seed), name, (32, 48))


@pytest.mark.parametrize("name", ARCHS)
def test_unknown_knob_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="widht"):
        create(name, CITY, widht=0.5)


def test_default_tasks_come_from_the_task_registry() -> None:
    model = create("segnet", **MODELS.tiny("segnet"))
    assert model.task_channels == default_task_channels()
