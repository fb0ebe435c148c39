"""VMSANet and HirMTL: shapes, live modules (no dead VMSM), parameter ownership, knobs, CLI training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from densemtl.cli.main import main
from densemtl.errors import ConfigError
from densemtl.models import count_parameters, create
from densemtl.models._vmsa_blocks import ChannelAttention, VariableMultiScale
from densemtl.models.base import MultiTaskModel

NYU = {"seg": 13, "depth": 1, "normal": 3}
CITY = {"seg": 7, "depth": 1}
FOUR = {"seg": 13, "seg2": 5, "depth": 1, "normal": 3}

TINY: dict[str, dict[str, Any]] = {
    "vmsanet": {"width": 0.125, "depth_stages": 3, "scales": (2, 4)},
    "hirmtl": {"backbone": "resnet18", "channels": 8},
}
SIZE = (32, 40)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def build(name: str, tasks: dict[str, int] = NYU, **extra: Any) -> MultiTaskModel:
    return create(name, tasks, **{**TINY[name], **extra})


def summed_loss(out: dict[str, Tensor]) -> Tensor:
    return sum(o.pow(2).mean() for o in out.values())  # type: ignore[return-value]


def perturbed(model: nn.Module, params: list[nn.Parameter], x: Tensor, amount: float = 0.5) -> Any:
    """Outputs of ``model`` after adding ``amount`` to ``params``; restores them afterwards.

    Perturbation tests run in train mode: batch statistics keep the signal O(1), whereas with fresh
    running statistics the deep nets' outputs are ~1e-7 and ``allclose`` would see no change.
    """
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(amount)
        out = model(x)
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    return out


# -- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "knobs"),
    [("vmsanet", {"width": 0.0625}), ("hirmtl", {"backbone": "resnet18", "channels": 8})],
)
@pytest.mark.parametrize(("tasks", "size"), [(NYU, (288, 384)), (CITY, (128, 256))])
def test_shapes_at_benchmark_resolutions(
    name: str, knobs: dict[str, Any], tasks: dict[str, int], size: tuple[int, int]
) -> None:
    model = create(name, tasks, **knobs).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert list(out) == list(tasks)
    for t, c in tasks.items():
        assert out[t].shape == (1, c, *size)
        assert torch.isfinite(out[t]).all()


@pytest.mark.parametrize(
    ("name", "extra", "size"),
    [
        ("vmsanet", {}, (33, 47)),
        ("vmsanet", {"vmsm_in_decoder": True, "depth_stages": 4, "scales": [3]}, (32, 48)),
        ("vmsanet", {"scales": [2, 4, 6, 8]}, (24, 24)),
        ("hirmtl", {}, (33, 47)),
        ("hirmtl", {"detach_peers": True}, (32, 32)),
    ],
)
@pytest.mark.parametrize("tasks", [CITY, FOUR, {"depth": 1}])
def test_tiny_shapes(name: str, extra: dict[str, Any], size: tuple[int, int], tasks: dict[str, int]) -> None:
    model = build(name, tasks, **extra)
    out = model(torch.rand(2, 3, *size))
    assert {t: o.shape for t, o in out.items()} == {t: (2, c, *size) for t, c in tasks.items()}


def test_vmsanet_too_small_input_is_explained() -> None:
    with pytest.raises(ValueError, match="depth_stages"):
        build("vmsanet", depth_stages=5)(torch.rand(2, 3, 16, 16))


# -- no dead module -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "extra", "tasks"),
    [
        ("vmsanet", {"vmsm_in_decoder": True}, CITY),
        ("hirmtl", {"detach_peers": True}, NYU),
        ("hirmtl", {}, {"seg": 7}),
    ],
)
def test_every_parameter_gets_a_gradient(name: str, extra: dict[str, Any], tasks: dict[str, int]) -> None:
    model = build(name, tasks, **extra)
    summed_loss(model(torch.rand(2, 3, *SIZE))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero


@pytest.mark.parametrize("where", ["encoder_shared", "decoder_shared"])
def test_every_vmsm_is_on_the_forward_path(where: str) -> None:
    model = build("vmsanet", CITY, vmsm_in_decoder=True)
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        before = model(x)
    for vmsm in getattr(model, where):
        assert isinstance(vmsm, VariableMultiScale)
        after = perturbed(model, [vmsm.fuse[0].weight], x, amount=-1.0)  # weight - 1: not a no-op
        for t in CITY:
            assert not torch.allclose(before[t], after[t]), (where, t)


def test_every_strided_vmsm_branch_contributes() -> None:
    vmsm = VariableMultiScale(4, 8, scales=(2, 4, 6))
    x = torch.rand(2, 4, 13, 17)
    with torch.no_grad():
        before = vmsm(x)
    assert before.shape == (2, 8, 13, 17)
    assert vmsm.fuse[0].weight.shape[1] == 3 * 4  # local, summed strided branches, pooling: all fused
    for branch in vmsm.strided:
        after = perturbed(vmsm, list(branch.parameters()), x)
        assert not torch.allclose(before, after)
    # and in the whole network, at every encoder level
    model = build("vmsanet", CITY)
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        before = model(x)["seg"]
    for vmsm in model.encoder_shared:
        for branch in vmsm.strided:
            assert not torch.allclose(before, perturbed(model, list(branch.parameters()), x)["seg"])


def test_strides_and_dilations_follow_scales() -> None:
    vmsm = VariableMultiScale(8, 8, scales=[3, 5])
    geometry = [(b[0][0].dilation, b[1][0][0].stride) for b in vmsm.strided]
    assert geometry == [((3, 3), (3, 3)), ((5, 5), (5, 5))]
    model = build("vmsanet", CITY, scales=[2, 4, 6, 8])
    assert all(len(m.strided) == 4 for m in model.encoder_shared)


def test_every_cacm_branch_contributes_and_widths_are_clamped() -> None:
    cacm = ChannelAttention(4)
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        before = cacm(x)
    assert len(cacm.branches()) == 5
    for branch in cacm.branches():
        assert not torch.allclose(before, perturbed(cacm, list(branch.parameters()), x))
    assert cacm.pool_branch[1].out_channels == 1  # 4 // 16 clamped to 1
    assert [b[-1].in_channels for b in cacm.conv_branches] == [2, 1, 1, 1]
    assert [b[-1].in_channels for b in ChannelAttention(64).conv_branches] == [32, 16, 8, 4]


# -- who owns what --------------------------------------------------------------------------------
def test_hirmtl_detached_peers_partition_the_model(task_partition: Any) -> None:
    model = build("hirmtl", NYU, detach_peers=True)
    _, shared, _ = task_partition(model)
    assert shared
    counts = count_parameters(model)
    assert counts["shared"] == sum(p.numel() for p in model.shared_parameters())


def test_vmsanet_task_parameters_are_masks_and_head() -> None:
    model = build("vmsanet", NYU)
    own = {id(p) for p in model.task_parameters("depth")}
    expected = [model.encoder_masks["depth"], model.decoder_masks["depth"], model.heads["depth"]]
    assert own == {id(p) for m in expected for p in m.parameters()}
    shared = {id(p) for p in model.shared_parameters()}
    for module in (model.trunk, model.encoder_cacm, model.decoder_cacm, model.encoder_shared, model.decoder_shared):
        assert {id(p) for p in module.parameters()} <= shared


@pytest.mark.parametrize(("name", "extra"), [("vmsanet", {}), ("hirmtl", {})])
def test_changing_one_tasks_parameters_changes_only_its_output(name: str, extra: dict[str, Any]) -> None:
    model = build(name, NYU, **extra)
    x = torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        before = model(x)
    for task in NYU:
        after = perturbed(model, model.task_parameters(task), x)
        for t in NYU:
            assert torch.equal(before[t], after[t]) == (t != task), (task, t)


def test_hirmtl_ownership_follows_the_gradient() -> None:
    """Other tasks' AICMs read task t's branch: with gradient it is shared, detached it is t's own."""
    x = torch.rand(2, 3, *SIZE)
    model = build("hirmtl", NYU)
    branch = list(model.scale_task["depth"].parameters()) + list(model.taf["depth"].parameters())
    assert not {id(p) for p in branch} & {id(p) for p in model.task_parameters("depth")}
    grads = torch.autograd.grad(model(x)["seg"].pow(2).mean(), branch, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

    model = build("hirmtl", NYU, detach_peers=True)
    own = model.task_parameters("depth")
    mine = [*model.scale_task["depth"].parameters(), *model.taf["depth"].parameters()]
    assert {id(p) for p in mine} <= {id(p) for p in own}
    out = model(x)
    for t in ("seg", "normal"):
        grads = torch.autograd.grad(out[t].pow(2).mean(), own, allow_unused=True, retain_graph=True)
        assert all(g is None or not g.any() for g in grads), t


def test_hirmtl_single_task_has_no_aicm() -> None:
    model = build("hirmtl", {"depth": 1})
    assert len(model.aicm) == 0
    assert {id(p) for p in model.task_parameters("depth")} == {
        id(p) for m in (model.scale_task, model.taf, model.heads) for p in m.parameters()
    }


# -- knobs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "knobs"),
    [
        ("vmsanet", {"scales": []}),
        ("vmsanet", {"scales": [2, 0]}),
        ("vmsanet", {"scales": 2}),
        ("vmsanet", {"width": 0}),
        ("vmsanet", {"depth_stages": 2}),
        ("vmsanet", {"vmsm_in_decoder": "yes"}),
        ("hirmtl", {"backbone": "resnet101"}),
        ("hirmtl", {"channels": 0}),
        ("hirmtl", {"detach_peers": 1}),
    ],
)
def test_bad_knobs_are_config_errors(name: str, knobs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=name):
        create(name, CITY, **knobs)


def test_hirmtl_on_resnet50() -> None:
    model = create("hirmtl", CITY, backbone="resnet50", channels=4)
    out = model(torch.rand(2, 3, *SIZE))
    assert {t: o.shape for t, o in out.items()} == {t: (2, c, *SIZE) for t, c in CITY.items()}


# -- training from the command line ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "knobs", "size"),
    [
        ("vmsanet", ["width=0.125", "depth_stages=3", "scales=[2,4]"], "32x40"),
        ("hirmtl", ["backbone=resnet18", "channels=8"], "64x64"),
    ],
)
def test_trains_from_the_cli(tmp_path: Path, arch: str, knobs: list[str], size: str) -> None:
    arch_args = [a for k in knobs for a in ("--arch-arg", k)]
    args = ["train", "--arch", arch, *arch_args, "--size", size, "--n-train", "4", "--n-val", "2"]
    args += ["--batch-size", "2", "--epochs", "1", "--out", str(tmp_path / arch), "--quiet"]
    assert main(args) == 0
    assert (tmp_path / arch / "summary.json").is_file()
