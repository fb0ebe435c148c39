"""InvPT (``--arch invpt``): shapes with padding, deep supervision, who owns what, training at T = 5.

A tiny ViT (``backbone_args``: width 24, 4 blocks, 2 heads; no weights) under a 16-wide
decoder, the registry's tiny knobs. The registry-driven suites (test_models.py,
test_five_tasks.py) cover the generic contract at those knobs too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

pytest.importorskip("timm")

from densemtl import methods  # noqa: E402
from densemtl.cli.main import main  # noqa: E402
from densemtl.engine.core import Engine  # noqa: E402
from densemtl.errors import ConfigError  # noqa: E402
from densemtl.models import MODELS, create  # noqa: E402
from densemtl.models._invpt_blocks import feature_indices  # noqa: E402
from densemtl.models.invpt import InvPT  # noqa: E402

FIVE = {"seg": 5, "depth": 1, "normal": 3, "edge": 1, "saliency": 1}
TINY = MODELS.tiny("invpt")


def build(tasks: dict[str, int] = FIVE, seed: int = 0, **knobs: Any) -> InvPT:
    torch.manual_seed(seed)
    model = create("invpt", tasks, **{**TINY, **knobs})
    assert isinstance(model, InvPT)
    return model


def batch_of(dense_batch: Callable[..., dict[str, Tensor]], tasks: dict[str, int], size: tuple[int, int]) -> dict:
    """conftest's seeded batch for seg/depth/normal, plus binary maps for edge and saliency."""
    binary = [t for t in tasks if t in ("edge", "saliency")]
    batch = dense_batch({t: c for t, c in tasks.items() if t not in binary}, size)
    g = torch.Generator().manual_seed(2)
    for t in binary:
        batch[t] = (torch.rand(2, 1, *size, generator=g) < 0.3).float()
    return batch


@pytest.fixture(scope="module")
def five() -> InvPT:
    return build()


@pytest.mark.parametrize("size", [(32, 48), (40, 56), (64, 80), (33, 47), (16, 16)])
def test_predictions_and_preliminary_predictions_at_input_size(five: InvPT, size: tuple[int, int]) -> None:
    out = five(torch.rand(2, 3, *size))
    assert list(out) == list(FIVE) and list(out.aux) == list(FIVE)
    for t, c in FIVE.items():
        assert out[t].shape == (2, c, *size) and torch.isfinite(out[t]).all()
        assert [a.shape for a in out.aux[t]] == [(2, c, *size)]


def test_inputs_are_padded_not_resized(five: InvPT) -> None:
    """40×56 reaches the ViT as 48×64 (zero-padded at the bottom and right), 64×80 as itself."""
    seen: list[tuple[int, ...]] = []
    hook = five.backbone.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            five(torch.rand(2, 3, 40, 56))
            five(torch.rand(2, 3, 64, 80))
    finally:
        hook.remove()
    assert seen == [(48, 64), (64, 80)]


def test_swin_backbone_four_stages_padded_to_32() -> None:
    swin = {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
    model = build({"seg": 5, "depth": 1}, backbone="timm:swin_tiny_patch4_window7_224", backbone_args=swin)
    assert model.backbone.reductions == (4, 8, 16, 32) and model.backbone.padded_size(40, 56) == (64, 64)
    out = model(torch.rand(2, 3, 40, 56))
    assert out["seg"].shape == (2, 5, 40, 56) and out["depth"].shape == (2, 1, 40, 56)


def test_vit_levels_are_evenly_spaced_blocks() -> None:
    assert feature_indices("vit_small_patch16_224", {}) == (2, 5, 8, 11)
    assert feature_indices("vit_large_patch16_384", {}) == (5, 11, 17, 23)
    assert feature_indices("vit_tiny_patch16_224", {"depth": 8}) == (1, 3, 5, 7)


@pytest.mark.parametrize("tasks", [{"seg": 5, "depth": 1}, FIVE])
def test_every_parameter_gets_a_gradient(tasks: dict[str, int], dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    model = build(tasks)
    batch = batch_of(dense_batch, tasks, (40, 56))
    sum(model.task_losses(model(batch["image"]), batch).values()).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_preliminary_predictions_learn_through_deep_supervision_only(
    dense_batch: Callable[..., dict[str, Tensor]],
) -> None:
    model = build(aux_weight=0.0)
    batch = batch_of(dense_batch, FIVE, (32, 48))
    preds = model(batch["image"])
    assert model.extra_losses(preds, batch) == {}
    sum(model.task_losses(preds, batch).values()).backward()
    assert all(p.grad is None for t in FIVE for p in model.heads[t].aux.parameters())


def test_ownership_backbone_and_decoder_shared_heads_per_task(five: InvPT) -> None:
    shared = {id(p) for p in five.shared_parameters()}
    for module in (five.backbone, five.preliminary, five.stages):
        assert all(id(p) in shared for p in module.parameters())
    for t in FIVE:
        own = five.task_parameters(t)
        assert own and {id(p) for p in own} == {id(p) for p in five.heads[t].parameters()}
    assert len(shared) + sum(len(five.task_parameters(t)) for t in FIVE) == len(list(five.parameters()))


def test_a_task_reaches_other_tasks_only_through_the_shared_decoder(
    dense_batch: Callable[..., dict[str, Tensor]],
) -> None:
    model = build()
    batch = batch_of(dense_batch, FIVE, (32, 48))
    for task in FIVE:
        model.zero_grad(set_to_none=True)
        model.task_losses(model(batch["image"]), batch)[task].backward()
        for other in FIVE:
            grads = [p.grad for p in model.heads[other].parameters()]
            if other == task:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None or not g.any() for g in grads), (task, other)
                # ... but the other tasks' tokens and preliminary features move L_task (joint attention)
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.preliminary[other].parameters())
        for stage in model.stages:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.blocks.parameters())


def test_no_representation_mode(five: InvPT) -> None:
    assert not five.has_representation
    with pytest.raises(ConfigError, match="no single shared representation"):
        Engine(five, methods.create("pcgrad"), tuple(FIVE), mode="representation")


@pytest.mark.parametrize(
    ("knobs", "needle"),
    [
        ({"backbone": "resnet50"}, "knob 'backbone' must be a timm model"),
        ({"backbone": "timm:vit_tiny_patch16_22"}, "did you mean timm:vit_tiny_patch16_224"),
        ({"embed_dim": 18}, "multiple of 4"),
        ({"num_heads": [3, 2, 1]}, "stage 1 has width 16"),
        ({"depths": [1, 1]}, "knob 'depths' must be a positive integer or a list of 3"),
        ({"sr_ratios": 0}, "knob 'sr_ratios'"),
        ({"aux_weight": -1.0}, "knob 'aux_weight'"),
        ({"pretrained": "yes"}, "knob 'pretrained' must be a bool"),
        ({"backbone_args": {"depht": 2}}, "timm cannot build vit_tiny_patch16_224"),
    ],
)
def test_bad_knobs_are_one_line_config_errors(knobs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        build({"seg": 5, "depth": 1}, **knobs)
    assert "\n" not in str(info.value) and "invpt" in str(info.value)


@pytest.mark.usefixtures("no_plots")
def test_trains_five_tasks_with_ew_pcgrad_nashmtl_and_predicts(tmp_path: Path) -> None:
    arch = ["--arch", "invpt"]
    for key, value in TINY.items():
        arch += ["--arch-arg", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    common = [*arch, "--data-arg", "tasks=" + ",".join(FIVE), "--size", "32x48", "--n-train", "8"]
    common += ["--n-val", "4", "--batch-size", "4", "--epochs", "1", "--quiet"]
    for method in ("ew", "pcgrad", "nashmtl"):
        run = tmp_path / method
        assert main(["train", *common, "--method", method, "--out", str(run)]) == 0
        summary = json.loads((run / "summary.json").read_text())
        assert list(summary["metrics"]) == list(FIVE)
    image = tmp_path / "scene.npy"
    np.save(image, np.random.default_rng(0).random((40, 56, 3)).astype(np.float32))
    out = tmp_path / "pred"
    assert (
        main(["predict", "--checkpoint", str(tmp_path / "nashmtl"), "--out", str(out), "--save-npy", str(image)]) == 0
    )
    assert (out / "scene_pred.png").is_file()
    assert np.load(out / "scene_depth.npy").shape[:2] == (40, 56)


@pytest.mark.parametrize("name", methods.available())
def test_every_method_takes_a_finite_step(name: str, dense_batch: Callable[..., dict[str, Tensor]]) -> None:
    """Every registered method, in its default mode (parameters or gramian for a gradient method:
    InvPT has no single representation), updates the shared decoder with a finite step."""
    from densemtl.training.builders import build_method

    tasks = {"seg": 5, "depth": 1, "normal": 3}
    model = build(tasks)
    engine = Engine(model, build_method(name, len(tasks), 0), tuple(tasks))
    result = engine.step(batch_of(dense_batch, tasks, (32, 48)))
    assert torch.isfinite(result.losses).all()
    grads = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
