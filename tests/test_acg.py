"""ACG: conflict correction with persistent EMA targets, then IMTL-G (METHODS.md §1)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from densemtl.balancing.acg import ACG
from densemtl.cli.main import main
from densemtl.methods import create

S = math.sqrt(0.19)  # √(1 − 0.9²)


def conflicting_pair(ratio: float = 2.0) -> torch.Tensor:
    """g_1 = (1, 0) and g_2 = ratio · (−0.9, √0.19): cosine −0.9, ‖g_2‖ = ratio."""
    return torch.tensor([[1.0, 0.0], [-0.9 * ratio, S * ratio]], dtype=torch.float64)


def rand(T: int, P: int, seed: int) -> torch.Tensor:
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_hand_worked_2d_step() -> None:
    # g_1 = (1, 0), g_2 = (−1.8, 2√0.19): φ = −0.9 < φ̂ = 0 for both ordered pairs.
    # Correction of g_1: ‖g_1‖ (φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_2‖√(1−φ̂²)) = 1·(0 + 0.9)/(2·1) = 0.45,
    #   g_1' = g_1 + 0.45 g_2 = (0.19, 0.9√0.19)   (orthogonal to g_2, as PCGrad with φ̂ = 0)
    # Correction of g_2: 2·0.9/1 = 1.8, g_2' = g_2 + 1.8 g_1 = (0, 2√0.19)   (orthogonal to g_1)
    # Targets: φ̂_12 = φ̂_21 = 0.99·0 + 0.01·(−0.9) = −0.009.
    # IMTL-G: u_1 = (√0.19, 0.9), u_2 = (0, 1); d = α_1 g_1' + α_2 g_2' with u_1·d = u_2·d gives
    #   α_1 (√0.19 − 0.9√0.19) = α_2 (2√0.19 − 1.8√0.19)  →  α_1 = 2 α_2  →  α = (2/3, 1/3),
    #   d = (2/3·0.19, 2/3·0.9√0.19 + 1/3·2√0.19) = (0.19·2/3, (19/15)√0.19).
    acg = ACG()
    d = acg(conflicting_pair())
    assert acg.correction is not None and acg.phi_hat is not None
    assert torch.allclose(acg.correction, torch.tensor([[1.0, 0.45], [1.8, 1.0]], dtype=torch.float64))
    assert torch.allclose(acg.phi_hat, torch.tensor([[0.0, -0.009], [-0.009, 0.0]], dtype=torch.float64))
    assert torch.allclose(d, torch.tensor([0.19 * 2 / 3, 19 / 15 * S], dtype=torch.float64))


@pytest.mark.parametrize("ratio", [1.0, 2.0, 0.1])
def test_conflicting_pair_differs_from_mean(ratio: float) -> None:
    J = conflicting_pair(ratio)
    d = ACG()(J)
    assert not torch.allclose(d, J.mean(dim=0), atol=1e-3)


@pytest.mark.parametrize("T,P,seed", [(2, 2, 0), (2, 9, 1), (3, 7, 2), (4, 30, 3), (5, 50, 4)])
def test_equal_projections_on_every_corrected_unit_row(T: int, P: int, seed: int) -> None:
    acg = ACG()
    J = rand(T, P, seed)
    for _ in range(3):  # also after the targets have moved
        d = acg(J)
        assert acg.correction is not None
        rows = acg.correction @ J
        units = rows / rows.norm(dim=1, keepdim=True)
        proj = units @ d
        assert torch.allclose(proj, proj.mean().expand(T), rtol=1e-8, atol=1e-10), proj.tolist()


def test_conflict_correction_reaches_the_target() -> None:
    # After one correction, cos(g_i', g_j) = φ̂_ij (the target before its EMA update).
    acg = ACG(correct_dominance=False, beta=0.5)
    J = conflicting_pair()
    acg(J)
    acg(J)  # targets now −0.45 before this call's update; the rows are corrected to it
    assert acg.correction is not None
    rows = acg.correction @ J
    cos = float(rows[0] @ J[1] / (rows[0].norm() * J[1].norm()))
    assert cos == pytest.approx(-0.45, abs=1e-6)  # up to eps = 1e-8 in the divisor


@pytest.mark.parametrize("T,seed", [(2, 0), (3, 1), (5, 2)])
def test_both_knobs_off_is_the_mean(T: int, seed: int) -> None:
    J = rand(T, 11, seed)
    acg = ACG(correct_conflicts=False, correct_dominance=False)
    for _ in range(2):
        assert torch.allclose(acg(J), J.mean(dim=0), rtol=1e-12, atol=1e-14)
    assert acg.phi_hat is None


def test_ablations() -> None:
    J = rand(3, 8, 5)
    # conflicts only: the mean of GradVac's corrected rows (GradVac's sum over T)
    gv = create("gradvac")
    assert torch.allclose(ACG(correct_dominance=False)(J), gv(J) / 3, rtol=1e-10)
    # dominance only: plain IMTL-G
    imtl = create("imtl")
    assert torch.allclose(ACG(correct_conflicts=False)(J), imtl(J), rtol=1e-10)


def test_targets_persist_and_change_the_gradient() -> None:
    # The seed code reset φ̂ every step and its correction rebound a loop variable (a no-op):
    # here the targets must accumulate across calls and steer the output.
    J = conflicting_pair()
    acg = ACG()
    first = acg(J)
    assert acg.phi_hat is not None
    targets = [acg.phi_hat.clone()]
    for _ in range(30):
        last = acg(J)
        targets.append(acg.phi_hat.clone())
    # φ̂ = −0.9 (1 − 0.99^k) after k calls with φ = −0.9 every time
    expected = -0.9 * (1 - 0.99**31)
    assert acg.phi_hat[0, 1] == pytest.approx(expected) and acg.phi_hat[1, 0] == pytest.approx(expected)
    assert all(not torch.equal(a, b) for a, b in zip(targets, targets[1:], strict=False))
    assert not torch.allclose(last, first, rtol=1e-3)
    # and the correction really changes the rows (C ≠ I) on every call
    assert acg.correction is not None and not torch.equal(acg.correction, torch.eye(2, dtype=torch.float64))


def test_state_dict_round_trip() -> None:
    acg = ACG(beta=0.1)
    acg.set_generator(torch.Generator().manual_seed(4))
    for seed in range(4):
        acg(rand(3, 6, seed))
    state = copy.deepcopy(acg.state_dict())
    assert acg.generator is not None
    restored = ACG(beta=0.1)
    restored.load_state_dict(state)
    restored.set_generator(torch.Generator().set_state(acg.generator.get_state()))
    assert restored.phi_hat is not None and acg.phi_hat is not None
    assert torch.equal(restored.phi_hat, acg.phi_hat) and bool((acg.phi_hat != 0).any())
    J = rand(3, 6, 99)
    assert torch.equal(acg(J), restored(J))
    fresh = ACG(beta=0.1)
    fresh.set_generator(torch.Generator().set_state(acg.generator.get_state()))
    assert not torch.allclose(fresh(J), restored(J))  # the state matters


def test_float32() -> None:
    acg = ACG()
    J = rand(3, 20, 6).float()
    out = acg(J)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_knobs() -> None:
    with pytest.raises(ValueError, match="beta"):
        ACG(beta=1.5)
    with pytest.raises(ValueError, match="eps"):
        ACG(eps=-1.0)


def test_trains_from_the_cli(tmp_path: Path, tiny_args: list[str]) -> None:
    import json

    run = tmp_path / "run"
    assert main(["train", *tiny_args, "--method", "acg", "--n-train", "4", "--n-val", "2", "--batch-size", "2",
                 "--out", str(run)]) == 0  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "acg"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in lines[-1]["train_loss"].values())
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert bool((state["method"]["phi_hat"] != 0).any())
