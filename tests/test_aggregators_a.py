"""MGDA, PCGrad, GradDrop, GradVac, IMTL-G, CAGrad and Nash-MTL: values against references.

Where torchjd 0.18 has the method, our output is compared with it on seeded random Jacobians;
the random methods draw their orders / uniforms the same way torchjd does, so seeding torch's
global generator for torchjd and ours with the same seed gives the same draws. Elsewhere
(or in addition) closed forms worked out by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from densemtl.balancing import Aggregator, create

torchjd_agg = pytest.importorskip("torchjd.aggregation")


def rand(T: int, P: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(T, P, generator=g, dtype=torch.float64)


def seeded(name: str, seed: int, **kwargs: Any) -> Aggregator:
    method = create(name, **kwargs)
    assert isinstance(method, Aggregator)
    method.set_generator(torch.Generator().manual_seed(seed))
    return method


def close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return float((a - b).norm()) <= rtol * (float(b.norm()) + 1e-12)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- MGDA
def test_mgda_against_torchjd() -> None:
    # torchjd runs the paper's plain Frank-Wolfe, stopping when the step γ < epsilon; ours adds
    # away steps and stops on the duality gap. For T = 2 both are exact after one step. For
    # T > 2 plain Frank-Wolfe stalls on a face of the simplex (its default settings land up to
    # ~20% away from the min-norm point here), so ours must be at least as short and agree with
    # torchjd run long.
    for seed in range(3):
        J = rand(2, 6, seed)
        assert close(create("mgda")(J), torchjd_agg.MGDA()(J), 1e-12)
    for T, seed in [(3, 1), (3, 3), (5, 3)]:
        J = rand(T, 6, seed)
        ours = create("mgda")(J)
        assert float(ours.norm()) <= float(torchjd_agg.MGDA()(J).norm()) * (1 + 1e-12)
        assert close(ours, torchjd_agg.MGDA(epsilon=1e-5, max_iters=5000)(J), 2e-3)


def test_mgda_two_task_closed_form() -> None:
    # g1 = (1, 0), g2 = (-1, 1): α1 = (g2 − g1)·g2 / ‖g1 − g2‖² = ((-2, 1)·(-1, 1)) / 5 = 3/5,
    # d = 0.6 g1 + 0.4 g2 = (0.2, 0.4), and g1·d = g2·d = 0.2 = ‖d‖² (equal, minimal).
    J = t([1.0, 0.0], [-1.0, 1.0])
    assert torch.allclose(create("mgda").weights_from_gramian(J @ J.T), t([0.6, 0.4])[0])
    for seed in range(5):
        g1, g2 = rand(2, 7, seed)
        a1 = float(((g2 - g1) @ g2) / (g1 - g2).pow(2).sum())
        a1 = min(max(a1, 0.0), 1.0)
        assert torch.allclose(create("mgda")(torch.stack([g1, g2])), a1 * g1 + (1 - a1) * g2)


@pytest.mark.parametrize("T", [3, 4, 8])
def test_mgda_is_the_exact_min_norm_point(T: int) -> None:
    for seed in range(4):
        J = rand(T, 6, seed)
        G = (J @ J.T).numpy()
        exact = minimize(
            lambda a, G=G: a @ G @ a,
            np.full(T, 1 / T),
            jac=lambda a, G=G: 2 * G @ a,
            method="SLSQP",
            bounds=[(0, 1)] * T,
            constraints=({"type": "eq", "fun": lambda a: a.sum() - 1},),
            options={"ftol": 1e-14, "maxiter": 500},
        ).x
        d = create("mgda")(J)
        assert close(d, torch.from_numpy(exact) @ J, 1e-5)
        assert float((J @ d).min()) >= float(d @ d) * (1 - 1e-6)  # g_t·d >= ‖d‖²


# ---------------------------------------------------------------- PCGrad
def pcgrad_on_rows(J: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1 of Yu et al. on the vectors themselves, with the same order draws."""
    out = torch.zeros_like(J[0])
    for i in range(len(J)):
        g = J[i].clone()
        for j in torch.randperm(len(J), generator=generator).tolist():
            if j != i and g @ J[j] < 0:
                g = g - (g @ J[j]) / (J[j] @ J[j]) * J[j]
        out += g
    return out


@pytest.mark.parametrize("T", [2, 3, 5])
def test_pcgrad_matches_torchjd_and_the_vector_version(T: int) -> None:
    for seed in range(4):
        J = rand(T, 4, seed)
        ours = seeded("pcgrad", seed)(J)
        torch.manual_seed(seed)
        assert close(ours, torchjd_agg.PCGrad()(J), 1e-10)
        assert close(ours, pcgrad_on_rows(J, torch.Generator().manual_seed(seed)), 1e-10)


def test_pcgrad_hand_worked() -> None:
    # g1 = (1, 0), g2 = (-1, 1), g1·g2 = -1 < 0:
    # g1' = g1 − (−1/2) g2 = (0.5, 0.5); g2' = g2 − (−1/1) g1 = (0, 1); sum = (0.5, 1.5).
    assert torch.allclose(create("pcgrad")(t([1.0, 0.0], [-1.0, 1.0])), t([0.5, 1.5])[0])
    # No conflict: plain sum.
    assert torch.allclose(create("pcgrad")(t([1.0, 0.0], [1.0, 1.0])), t([2.0, 1.0])[0])


# ---------------------------------------------------------------- GradDrop
@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_matches_torchjd(leak: float) -> None:
    for seed, T in [(0, 2), (1, 3), (2, 5)]:
        J = rand(T, 40, seed)
        ours = seeded("graddrop", seed, leak=leak)(J)
        torch.manual_seed(seed)
        ref = torchjd_agg.GradDrop(leak=torch.full((T,), leak, dtype=torch.float64))(J)
        assert torch.allclose(ours, ref)


def test_graddrop_keeps_one_sign_per_coordinate() -> None:
    J = rand(3, 200, 4)
    out = seeded("graddrop", 0)(J)
    pos, neg = J.clamp(min=0).sum(0), J.clamp(max=0).sum(0)
    kept = torch.isclose(out, pos) | torch.isclose(out, neg)
    assert kept.all()
    # Columns of one sign are always kept whole (purity 1 or 0).
    J = torch.tensor([[1.0, -2.0], [3.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(seeded("graddrop", 0)(J), J.sum(0))
    # leak = 1 is the plain sum.
    assert torch.allclose(seeded("graddrop", 0, leak=1.0)(rand(3, 9, 1)), rand(3, 9, 1).sum(0))


# ---------------------------------------------------------------- GradVac
def test_gradvac_matches_torchjd_over_steps() -> None:
    # torchjd keeps the same per-pair EMA and the same correction (its beta default is 0.5;
    # we pass the paper's 0.01 to both). Several steps check that the state evolves alike.
    # eps = 0 in both: torchjd adds it to unnormalised denominators and we to trace-normalised
    # ones, which differ at the 1e-8 level.
    for T in (2, 3, 4):
        ours = seeded("gradvac", 5, eps=0.0)
        ref = torchjd_agg.GradVac(beta=0.01, eps=0.0)
        torch.manual_seed(5)
        for step in range(6):
            J = rand(T, 5, 100 * T + step)
            assert close(ours(J), ref(J), 1e-8)


def test_gradvac_first_step_is_pcgrad_and_state_persists() -> None:
    # Targets start at 0: with φ < 0 the correction is −(g_i·g_j)/‖g_j‖² g_j, PCGrad's projection.
    J = t([1.0, 0.0], [-1.0, 1.0])
    gv = create("gradvac")
    assert torch.allclose(gv(J), t([0.5, 1.5])[0])
    assert float(gv.state_dict()["phi_hat"][0, 1]) == pytest.approx(0.01 * (-1 / 2**0.5))
    # After steps on well-aligned rows the targets are positive, so a pair with a small positive
    # cosine is now corrected, while a fresh GradVac (targets 0) leaves it alone.
    aligned = t([1.0, 0.2], [1.0, -0.1])
    for _ in range(50):
        gv(aligned)
    weak = t([1.0, 0.0], [0.05, 1.0])
    assert torch.allclose(create("gradvac")(weak), weak.sum(0))
    assert not torch.allclose(gv(weak), weak.sum(0))


def test_gradvac_correction_reaches_the_target() -> None:
    # With φ̂_12 = 0.5 and cos(g1, g2) = 0.1, g1' = g1 + C12 g2 has cos(g1', g2) = 0.5 exactly.
    # For T = 2 the weights are (1 + C21, 1 + C12).
    g1, g2 = t([1.0, 0.0])[0], t([0.1, 0.99498743710662])[0]
    gv = create("gradvac")
    gv.load_state_dict({"phi_hat": torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)})
    J = torch.stack([g1, g2])
    w = gv.weights_from_gramian(J @ J.T)
    g1_new = g1 + (w[1] - 1) * g2
    assert float(g1_new @ g2 / (g1_new.norm() * g2.norm())) == pytest.approx(0.5, abs=1e-6)


# ---------------------------------------------------------------- IMTL-G
@pytest.mark.parametrize("T", [2, 3, 5])
def test_imtl_matches_torchjd_and_paper_closed_form(T: int) -> None:
    for seed in range(4):
        J = rand(T, 8, seed)
        ours = create("imtl")(J)
        assert close(ours, torchjd_agg.IMTLG()(J), 1e-8)
        # Paper: α_{2..T} = g1 Uᵀ (D Uᵀ)⁻¹, α1 = 1 − Σ α_{2..T}.
        U = J / J.norm(dim=1, keepdim=True)
        D, Ud = J[:1] - J[1:], U[:1] - U[1:]
        rest = J[0] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
        alpha = torch.cat([1 - rest.sum(0, keepdim=True), rest])
        assert close(ours, alpha @ J, 1e-8)
        projections = U @ ours
        assert torch.allclose(projections, projections[0].expand(T), rtol=1e-8)


def test_imtl_hand_worked_and_degenerate() -> None:
    # g1 = (1, 0), g2 = (0, 2): α1 = 2 α2, α1 + α2 = 1, so α = (2/3, 1/3) and d = (2/3, 2/3).
    J = t([1.0, 0.0], [0.0, 2.0])
    assert torch.allclose(create("imtl")(J), t([2 / 3, 2 / 3])[0])
    # Rows g, g, 2g, 0 (rank 1): G = ‖g‖² v vᵀ with v = (1, 1, 2, 0), n = ‖g‖ v, and the
    # pseudo-inverse gives G⁺n ∝ v, so α = v / 4 = (¼, ¼, ½, 0): the zero row gets no weight.
    g = rand(1, 5, 0)[0]
    J = torch.stack([g, g, 2 * g, 0 * g])
    w = create("imtl").weights_from_gramian(J @ J.T)
    assert torch.allclose(w, t([0.25, 0.25, 0.5, 0.0])[0])
    # Opposite rows: no direction has equal, non-zero projections; the weights are 0.
    J = torch.stack([g, -g])
    assert torch.equal(create("imtl").weights_from_gramian(J @ J.T), torch.zeros(2, dtype=g.dtype))


# ---------------------------------------------------------------- CAGrad
def test_cagrad_pinned_values() -> None:
    # torchjd's documented example, CAGrad(c=0.5) without rescaling (torchjd has no rescale).
    J = t([-4.0, 1.0, 1.0], [6.0, 1.0, 1.0])
    assert torch.allclose(create("cagrad", rescale=0)(J), t([0.1835, 1.2041, 1.2041])[0], atol=1e-4)
    # Orthogonal unit rows: by symmetry w* = (½, ½), g_w = g0 and d = (1 + c) g0 = (0.75, 0.75);
    # rescale=1 divides by 1 + c² = 1.25.
    J = t([1.0, 0.0], [0.0, 1.0])
    assert torch.allclose(create("cagrad", rescale=0)(J), t([0.75, 0.75])[0], atol=1e-6)
    assert torch.allclose(create("cagrad")(J), t([0.6, 0.6])[0], atol=1e-6)
    assert torch.allclose(create("cagrad", rescale=2)(J), t([0.5, 0.5])[0], atol=1e-6)


def test_cagrad_c_zero_is_the_mean() -> None:
    for T in (2, 3, 5):
        J = rand(T, 6, T)
        assert torch.allclose(create("cagrad", c=0.0)(J), J.mean(0))


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_solves_the_primal(c: float) -> None:
    # max_d min_t g_t·d  s.t. ‖d − g0‖ <= c‖g0‖, solved directly in P = 4 dimensions.
    for seed in range(3):
        J = rand(3, 4, seed) + 0.3
        g0 = J.mean(0).numpy()
        r = c * np.linalg.norm(g0)
        Jn = J.numpy()
        primal = minimize(
            lambda z: -z[-1],
            np.append(g0, 0.0),
            method="SLSQP",
            constraints=[
                {"type": "ineq", "fun": lambda z, Jn=Jn: Jn @ z[:-1] - z[-1]},
                {"type": "ineq", "fun": lambda z, r=r, g0=g0: r**2 - np.sum((z[:-1] - g0) ** 2)},
            ],
            options={"ftol": 1e-14, "maxiter": 500},
        )
        d = create("cagrad", c=c, rescale=0)(J)
        assert float((J @ d).min()) == pytest.approx(-primal.fun, rel=1e-5)
        assert float((d - J.mean(0)).norm()) <= r * (1 + 1e-6)


def test_cagrad_matches_torchjd_when_cvxpy_is_there() -> None:
    pytest.importorskip("cvxpy")
    for seed in range(3):
        J = rand(3, 6, seed)
        assert close(create("cagrad", rescale=0)(J), torchjd_agg.CAGrad(c=0.5)(J), 1e-4)


# ---------------------------------------------------------------- Nash-MTL
@pytest.mark.parametrize("T", [2, 3, 5])
def test_nashmtl_solves_g_alpha_equals_inverse_alpha(T: int) -> None:
    for seed in range(3):
        J = rand(T, 10, seed) + 0.3
        G = J @ J.T
        alpha = create("nashmtl").weights_from_gramian(G)
        assert torch.allclose(G @ alpha, 1 / alpha, rtol=1e-6)
        # torchjd's FairGrad with α = 1 solves the same equation Gw = 1/w (least squares).
        assert close(create("nashmtl")(J), torchjd_agg.FairGrad(alpha=1.0)(J), 1e-5)


def test_nashmtl_edge_cases_and_state() -> None:
    # T = 1: α = 1/‖g‖, a unit step.
    assert torch.allclose(create("nashmtl")(t([3.0, 4.0])), t([0.6, 0.8])[0])
    # Scale-free: ‖d‖² = αᵀGα = T at any scale.
    J = rand(3, 10, 1) + 0.3
    for scale in (1e-8, 1.0, 1e8):
        assert float(create("nashmtl")(scale * J).norm()) == pytest.approx(3**0.5, rel=1e-6)
    # A zero gradient gets weight 0; the others bargain alone.
    Jz = torch.cat([J[:2], torch.zeros(1, 10, dtype=J.dtype)])
    w = create("nashmtl").weights_from_gramian(Jz @ Jz.T)
    assert float(w[2]) == 0.0
    assert torch.allclose(w[:2], create("nashmtl").weights_from_gramian(J[:2] @ J[:2].T))
    # Opposite gradients: no update helps both, so no bargain (d = 0).
    assert torch.equal(create("nashmtl")(t([1.0, 2.0], [-1.0, -2.0])), torch.zeros(2, dtype=torch.float64))
    # max_norm clips ‖d‖; the warm start is state and round-trips.
    assert float(create("nashmtl", max_norm=0.5)(J).norm()) == pytest.approx(0.5)
    nash = create("nashmtl")
    nash(J)
    assert nash.state_dict()["prev_alpha"] is not None


def test_nashmtl_near_pareto_stationary_and_warm_start() -> None:
    # 8 rows in 6 dimensions, nearly Pareto-stationary (‖d*‖² ~ 1e-7 of tr G): huge α, where the
    # CCP alone stalls; the answer must still satisfy Gα = 1/α.
    for seed in (5, 8):
        J = rand(8, 6, seed)
        G = J @ J.T
        alpha = create("nashmtl").weights_from_gramian(G)
        assert torch.allclose(alpha * (G @ alpha), torch.ones(8, dtype=G.dtype), atol=1e-6)
    # Along a slowly changing trajectory the warm start is reused and the answers stay exact.
    nash, J = create("nashmtl"), rand(3, 20, 0) + 0.2
    for step in range(10):
        J = J + 0.05 * rand(3, 20, 100 + step)
        alpha = nash.weights_from_gramian(J @ J.T)
        assert torch.allclose(alpha * (J @ J.T @ alpha), torch.ones(3, dtype=J.dtype), atol=1e-3)


def test_nashmtl_matches_torchjd_when_cvxpy_is_there() -> None:
    pytest.importorskip("cvxpy")
    for seed in range(3):
        J = rand(3, 8, seed) + 0.3
        ref = torchjd_agg.NashMTL(n_tasks=3, max_norm=0.0)(J)
        assert close(create("nashmtl")(J), ref, 1e-3)
