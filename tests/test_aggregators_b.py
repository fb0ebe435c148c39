"""UPGrad, Aligned-MTL, MoCo, FairGrad, SDMGrad, MoDo and ExcessMTL: values and limits.

Where torchjd 0.18 has the method, our output is compared with it on seeded random Jacobians
(normalisation differences are stated at each test); elsewhere closed forms and limits.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from densemtl.balancing import available, create
from densemtl.balancing.modo import project_onto_simplex
from densemtl.balancing.upgrad import dual_cone_weights

torchjd_agg = pytest.importorskip("torchjd.aggregation")

NAMES = ["upgrad", "alignedmtl", "moco", "fairgrad", "sdmgrad", "modo", "excessmtl"]


def rand(T: int, P: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(T, P, generator=g, dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return float((a - b).norm()) <= rtol * (float(b.norm()) + 1e-12)


def test_registered() -> None:
    assert set(NAMES) <= set(available())
    for name in NAMES:
        assert type(create(name)).__name__ in repr(create(name))


# ---------------------------------------------------------------- UPGrad
@pytest.mark.parametrize("T", [2, 3, 5])
def test_upgrad_matches_torchjd(T: int) -> None:
    pytest.importorskip("quadprog")  # torchjd's default projector; pip install torchjd[quadprog_projector]
    for seed in range(4):
        J = rand(T, 3, seed)  # P < T: the rows conflict
        assert close(create("upgrad")(J), torchjd_agg.UPGrad()(J), 1e-6)


def test_upgrad_qp_matches_generic_solver() -> None:
    # min vᵀGv s.t. v >= u, solved by a bound-constrained quasi-Newton instead of NNLS.
    for seed in range(5):
        A = rand(4, 3, seed).numpy()
        G = A @ A.T + 1e-3 * np.eye(4)
        u = np.abs(rand(4, 1, seed + 10).numpy()[:, 0]) * (np.arange(4) == seed % 4)
        ref = minimize(
            lambda v, G=G: v @ G @ v,
            u + 1.0,
            jac=lambda v, G=G: 2 * G @ v,
            method="L-BFGS-B",
            bounds=[(ui, None) for ui in u],
            options={"ftol": 1e-15, "gtol": 1e-12},
        )
        assert np.allclose(dual_cone_weights(G, u), ref.x, atol=1e-5)


@pytest.mark.parametrize("T", [1, 2, 3, 5])
def test_upgrad_does_not_conflict(T: int) -> None:
    for seed in range(5):
        J = rand(T, 3, seed)
        out = create("upgrad", reg_eps=0.0)(J)
        assert float((J @ out).min()) >= -1e-8 * float(J.norm() ** 2)


def test_upgrad_is_the_mean_without_conflict() -> None:
    J = torch.tensor([[1.0, 0.2, 0.0], [0.3, 1.0, 0.1], [0.5, 0.5, 2.0]], dtype=torch.float64)
    assert bool((J @ J.T >= 0).all())
    assert close(create("upgrad", reg_eps=0.0)(J), J.mean(0), 1e-9)
    pref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    assert close(create("upgrad", pref_vector=pref, reg_eps=0.0)(J), pref @ J, 1e-9)


def test_upgrad_projects_a_conflicting_pair() -> None:
    # g2 = -g1/2 + orthogonal part; the projections remove the conflict: J out >= 0.
    J = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64)
    out = create("upgrad", reg_eps=0.0)(J)
    assert float((J @ out).min()) >= -1e-12
    assert not close(out, J.mean(0), 1e-3)


# ---------------------------------------------------------------- Aligned-MTL
@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_alignedmtl_matches_torchjd(T: int, mode: str) -> None:
    for seed in range(3):
        J = rand(T, 10, seed)
        assert close(create("alignedmtl", scale_mode=mode)(J), torchjd_agg.AlignedMTL(scale_mode=mode)(J), 1e-9)
    Jf = rand(T, 10, 7).float()
    assert close(create("alignedmtl", scale_mode=mode)(Jf), torchjd_agg.AlignedMTL(scale_mode=mode)(Jf), 1e-5)


def test_alignedmtl_rank_deficient_matches_torchjd() -> None:
    J = rand(2, 10, 0)
    J = torch.cat([J, 2 * J[:1]])
    assert close(create("alignedmtl")(J), torchjd_agg.AlignedMTL()(J), 1e-9)


def test_alignedmtl_orthogonal_rows() -> None:
    # Orthogonal equal-norm rows are already aligned: the mean (torchjd's p = 1/T) or, with
    # p = 1 as in the authors' code and LibMTL, the sum.
    J = 3.0 * torch.eye(3, 5, dtype=torch.float64)
    assert close(create("alignedmtl")(J), J.mean(0), 1e-12)
    assert close(create("alignedmtl", pref_vector=[1.0, 1.0, 1.0])(J), J.sum(0), 1e-12)
    # Unequal norms: every row is rescaled to the smallest singular value (scale_mode="min").
    norms = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    J = norms[:, None] * torch.eye(3, 5, dtype=torch.float64)
    assert close(create("alignedmtl")(J), (J / norms[:, None]).mean(0), 1e-12)
    # Scale equivariant.
    J = rand(3, 6, 1)
    assert close(create("alignedmtl")(1e4 * J), 1e4 * create("alignedmtl")(J), 1e-9)


def test_alignedmtl_aligned_rows_are_orthonormal_up_to_scale() -> None:
    J = rand(3, 8, 2)
    B = create("alignedmtl").balance_transform(J @ J.T)
    Gh = (B @ J) @ (B @ J).T
    assert torch.allclose(Gh, Gh[0, 0] * torch.eye(3, dtype=torch.float64), atol=1e-9)


# ---------------------------------------------------------------- FairGrad
@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_matches_torchjd(T: int, alpha: float) -> None:
    # torchjd (like the authors) runs least_squares to its default tolerance: agree to ~1e-5.
    for seed in range(2):
        J = rand(T, 10, seed)
        assert close(create("fairgrad", alpha=alpha)(J), torchjd_agg.FairGrad(alpha)(J), 1e-5)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_fairgrad_solves_its_equation(alpha: float) -> None:
    for seed, scale in [(0, 1.0), (1, 1e-5), (2, 1e5)]:
        J = rand(4, 6, seed, scale)
        G = J @ J.T
        w = create("fairgrad", alpha=alpha).weights_from_gramian(G)
        assert bool((w > 0).all())
        assert close(G @ w, w ** (-1.0 / alpha), 1e-6)


def test_fairgrad_orthogonal_rows() -> None:
    norms = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    J = norms[:, None] * torch.eye(3, 4, dtype=torch.float64)
    w = create("fairgrad").weights_from_gramian(J @ J.T)
    assert close(w, 1.0 / norms, 1e-6)  # alpha = 1: w_t = 1/||g_t||, every task improves equally
    w = create("fairgrad", alpha=2.0).weights_from_gramian(J @ J.T)
    assert close(w, norms ** (-4.0 / 3.0), 1e-6)  # w_t = ||g_t||^(-2 alpha/(1+alpha))
    J = rand(3, 5, 0)
    assert close(create("fairgrad", alpha=0.0)(J), J.mean(0), 1e-12)


def test_fairgrad_degenerate_is_finite() -> None:
    J = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    out = create("fairgrad")(J)
    assert bool(torch.isfinite(out).all())


# ---------------------------------------------------------------- SDMGrad
@pytest.mark.parametrize("T", [2, 3, 5])
def test_sdmgrad_matches_torchjd(T: int) -> None:
    # Same inner SGD and warm start; torchjd adds 1e-8 to the normaliser s² (we guard s = 0
    # instead), hence the moderately large gradients.
    ours, ref = create("sdmgrad"), torchjd_agg.SDMGradWeighting(lambda_=0.3)
    for seed in range(4):
        J = rand(T, 4, seed, 100.0)
        G = J @ J.T
        assert close(ours.weights_from_gramian(G), ref(G), 1e-7)


def test_sdmgrad_limits() -> None:
    J = rand(3, 5, 0)
    assert close(create("sdmgrad", lamda=1e8)(J), J.mean(0), 1e-6)
    J = torch.tensor([[1.0, 0.0], [-0.5, 2.0]], dtype=torch.float64)
    lam = 0.3
    m = create("sdmgrad", lamda=lam, lr=0.5, niter=300)
    got = m.weights_from_gramian(J @ J.T)
    res = minimize_scalar(
        lambda t: float(((torch.tensor([t, 1 - t], dtype=torch.float64) + lam / 2) @ J).norm() ** 2),
        bounds=(0, 1),
        method="bounded",
        options={"xatol": 1e-10},
    )
    w = torch.tensor([res.x, 1 - res.x], dtype=torch.float64)
    assert close(got, (w + lam / 2) / (1 + lam), 1e-5)
    # lamda = 0 is MGDA's min-norm point: 4/5, 1/5 for orthogonal rows of norms 1 and 2.
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    w0 = create("sdmgrad", lamda=0.0, lr=0.5, niter=300).weights_from_gramian(J @ J.T)
    assert close(w0, torch.tensor([0.8, 0.2], dtype=torch.float64), 1e-6)


# ---------------------------------------------------------------- MoDo
@pytest.mark.parametrize("T", [2, 3, 5])
def test_modo_matches_torchjd(T: int) -> None:
    # torchjd's MoDoWeighting takes J_1 J_2ᵀ; with one batch that is G. Defaults differ
    # (torchjd gamma=0.1), so we pass LibMTL's gamma=1e-3, rho=0.1 to both.
    ours, ref = create("modo"), torchjd_agg.MoDoWeighting(gamma=1e-3, rho=0.1)
    for seed in range(5):
        J = rand(T, 4, seed, 10.0)
        G = J @ J.T
        assert close(ours.weights_from_gramian(G), ref(G), 1e-12)


def test_modo_state_and_limits() -> None:
    J = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    m = create("modo", gamma=0.05)
    first = m(J)
    assert m.lambd is not None and not torch.allclose(m.lambd, torch.full((2,), 0.5, dtype=torch.float64))
    for _ in range(300):
        out = m(J)
    assert not close(first, out, 1e-3)
    # Converges to the minimiser of 1/2||Jᵀl||² + rho/2||l||² on the simplex: (9.1, 1.1)/10.2.
    assert close(m.lambd, torch.tensor([9.1, 1.1], dtype=torch.float64) / 10.2, 1e-6)
    same = torch.tensor([[1.0, -2.0, 0.5]] * 3, dtype=torch.float64)
    assert close(create("modo")(same), same[0], 1e-12)


def test_project_onto_simplex() -> None:
    v = torch.tensor([0.2, 1.5, -0.3, 0.9], dtype=torch.float64)
    p = project_onto_simplex(v)
    assert abs(float(p.sum()) - 1) < 1e-12 and bool((p >= 0).all())
    assert close(p, torch.tensor([0.0, 0.8, 0.0, 0.2], dtype=torch.float64), 1e-12)
    assert close(project_onto_simplex(torch.tensor([1e12, -1e12])), torch.tensor([1.0, 0.0]), 0)


# ---------------------------------------------------------------- MoCo
def test_moco_tracking_and_weights_by_hand() -> None:
    J1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    J2 = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    m = create("moco", beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0)
    out1 = m(J1)  # Y = J1; lambda = Pi(1/2 - 0.1 * 1/2) = (1/2, 1/2)
    assert close(out1, J1.mean(0), 1e-12)
    out2 = m(J2)
    beta2, gamma2 = 0.5 / 2**0.5, 0.1 / 2**0.5
    Y = J1 - beta2 * (J1 - J2)
    lam = project_onto_simplex(
        torch.full((2,), 0.5, dtype=torch.float64) - gamma2 * (Y @ Y.T) @ torch.full((2,), 0.5, dtype=torch.float64)
    )
    assert close(out2, lam @ Y, 1e-12)
    assert m.step == 2


def test_moco_limits() -> None:
    same = torch.tensor([[1.0, -2.0, 0.5]] * 3, dtype=torch.float64)
    m = create("moco")
    for _ in range(3):
        assert close(m(same), same[0], 1e-12)
    # A constant J: Y stays J and lambda goes to MGDA's min-norm weights (4/5, 1/5).
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    m = create("moco")
    for _ in range(300):
        out = m(J)
    assert close(out, torch.tensor([0.8, 0.4], dtype=torch.float64), 1e-3)


# ---------------------------------------------------------------- ExcessMTL
@pytest.mark.parametrize("T", [2, 3, 5])
def test_excessmtl_matches_torchjd(T: int) -> None:
    # The authors' code (and ours) records the baseline on the first call without updating and
    # keeps weights that sum to T; torchjd's n_warmup_steps=1 does the same with weights that
    # sum to 1, hence the factor T.
    ours, ref = create("excessmtl"), torchjd_agg.ExcessMTL(robust_step_size=1e-2, n_warmup_steps=1)
    for k in range(6):
        J = rand(T, 30, k, 1.0 + k)
        assert close(ours(J), T * ref(J), 1e-8)


def test_excessmtl_weights_move_to_the_lagging_task() -> None:
    m = create("excessmtl", robust_step_size=0.5)
    J = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert close(m(J), J.sum(0), 1e-12)  # first call: weights 1
    for _ in range(5):
        m(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.1, 0.0]], dtype=torch.float64))
    w = m.task_weights
    assert w is not None
    assert abs(float(w.sum()) - 2) < 1e-12 and float(w[0]) > float(w[1])
    # A task silent on the first call gets its baseline later, never a division by zero.
    m = create("excessmtl")
    m(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.isfinite(m(torch.tensor([[1.0, 0.0], [0.0, 5.0]]))).all()
    assert float(m.baseline[1]) > 0


# ---------------------------------------------------------------- all seven
@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_and_change(name: str) -> None:
    a = create(name)
    for seed in range(3):
        a(rand(3, 6, seed))
    b = create(name)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    J = rand(3, 6, 99)
    assert torch.equal(a(J), b(J))


@pytest.mark.parametrize("name", ["moco", "sdmgrad", "modo", "excessmtl"])
def test_stateful_methods_depend_on_history(name: str) -> None:
    a, b = create(name), create(name)
    a(rand(3, 6, 1, 5.0))
    a(rand(3, 6, 2, 5.0))
    J = rand(3, 6, 3, 5.0)
    assert not torch.allclose(a(J), b(J))


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_extreme_scales_and_degenerate_rows(name: str) -> None:
    for scale in (1e-6, 1e6):
        for J in (
            rand(3, 4, 0),
            torch.cat([rand(2, 4, 1), torch.zeros(1, 4, dtype=torch.float64)]),
            rand(1, 4, 2),
            torch.zeros(3, 4),
            rand(5, 2, 3).float(),
        ):
            m = create(name)
            for _ in range(2):
                out = m(scale * J)
                assert out.shape == (J.shape[1],) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("upgrad", {"reg_eps": -1}),
        ("alignedmtl", {"scale_mode": "max"}),
        ("moco", {"beta": 0}),
        ("fairgrad", {"alpha": -1}),
        ("sdmgrad", {"niter": 0}),
        ("modo", {"gamma": 0}),
        ("excessmtl", {"robust_step_size": 0}),
    ],
)
def test_bad_knobs_are_rejected(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        create(name, **kwargs)
