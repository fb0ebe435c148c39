"""Properties every gradient aggregator must have, over every registered ``Aggregator``.

A method joins this suite by being registered: the list below is discovered, not written.
Per-method exceptions live in the two dicts that follow, each with its reason.
"""

from __future__ import annotations

from typing import cast

import pytest
import torch

from densemtl.balancing import Aggregator, available, create
from densemtl.testing import check_method
from densemtl.testing.methods import degenerate_jacobians


def _aggregators() -> list[str]:
    names = []
    for name in available():
        try:
            method = create(name)
        except Exception:  # a method that needs arguments is tested in its own file
            continue
        if not method.requirements.uses_losses:
            names.append(name)
    return names


NAMES = _aggregators()

#: degree k with A(sJ) = s^k A(J) for s > 0 (default 1); None: not homogeneous, only finite.
SCALE_DEGREE: dict[str, int | None] = {
    "nashmtl": 0,  # Gα = 1/α makes ‖d‖² = T whatever the scale
    "fairgrad": 0,  # Gw = w^(-1/α) with the default α = 1 is Nash-MTL's equation
    "moco": None,  # gradient steps on λ and on the tracked y depend on the scale of J
    "modo": None,  # likewise: a step on λ of size γ · J Jᵀ λ
    "upgrad": None,  # torchjd's norm_eps: a Gramian of trace < 1e-4 falls back to the mean
    "mao": None,  # m̂/(√v̂ + ε): degree 0 except where ε matters (small scales)
}

#: tasks up to which g_t · A(J) >= 0 is guaranteed (None: any number of tasks)
NON_CONFLICTING: dict[str, int | None] = {
    "mgda": None,  # g_t·d >= ‖d‖² at the min-norm point
    "nashmtl": None,  # g_t·d = 1/α_t > 0, or d = 0 when no Nash solution exists
    "upgrad": None,  # projections onto the dual cone
    "fairgrad": None,  # g_t·d = w_t^(-1/α) > 0
    "pcgrad": 2,  # g_1·d = ‖g_1‖² − (g_1·g_2)²/‖g_2‖² + 0 >= 0
    "imtl": 2,  # common projection k = 1/(1ᵀG⁻¹n) >= 0 for T = 2
}


def make(name: str, seed: int = 0) -> Aggregator:
    method = cast(Aggregator, create(name))
    method.set_generator(torch.Generator().manual_seed(seed))
    return method


def rand(T: int, P: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(T, P, generator=torch.Generator().manual_seed(seed), dtype=dtype)


#: the numbers of tasks the properties below are checked at besides their own (3: NYUv2; 5: PASCAL-Context)
TASK_COUNTS = (3, 5)


def special_matrices(T: int = 3) -> dict[str, torch.Tensor]:
    """Degenerate Jacobians with ``T`` rows (T = 3: the original cases; T = 5: their five-task analogues)."""
    if T == 3:
        return degenerate_jacobians()  # densemtl.testing's, which every plugin method is checked on too
    equal = rand(T, 9, 11)
    equal[1] = equal[0]
    equal[T - 1] = equal[0]
    zero_row = rand(T, 9, 12)
    zero_row[1] = 0.0
    zero_row[T - 1] = 0.0
    g, h = rand(2, 9, 13)
    opposite = torch.stack([g, -g, h, -h, *([g + h] * (T - 4))])
    return {
        "equal_rows": equal,
        "zero_row": zero_row,
        "opposite": opposite,
        "low_rank": rand(T, 1, 14) @ rand(1, 9, 15),  # every row parallel or anti-parallel
        "all_zero": torch.zeros(T, 9, dtype=torch.float64),
        "one_column": rand(T, 1, 16),
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", TASK_COUNTS)
def test_conforms(name: str, T: int) -> None:
    """densemtl.testing's checks: a finite (P,) update of J's dtype for T x P in (1, 5), (2, 7),
    (3, 4), (5, 50), float32 and float64; finite on degenerate Jacobians; exact resume from the
    state_dict at T tasks; where the source is the Gramian, the update is weights_from_gramian(G) @ J
    (what the engine relies on when it computes c from G alone: gramian mode, --recompute-every);
    and row_weights, when given, are the w of the update wᵀJ (the engine scales each head by them)."""
    check_method(name, num_tasks=T)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_extreme_scales_float32(name: str, scale: float) -> None:
    for T in (1, 2, 3, 5):
        out = make(name)(scale * rand(T, 30, T, torch.float32))
        assert torch.isfinite(out).all(), f"{name}: non-finite output at T={T}, scale {scale:g}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(special_matrices()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", TASK_COUNTS)
def test_degenerate_jacobians_give_finite_output(name: str, case: str, dtype: torch.dtype, T: int) -> None:
    J = special_matrices(T)[case].to(dtype)
    for scale in (1.0, 1e-8, 1e8):
        out = make(name)(scale * J)
        assert out.shape == (J.shape[1],)
        assert torch.isfinite(out).all(), f"{name} on {case} x {scale:g}"
    if case == "all_zero":
        assert torch.allclose(make(name)(J), torch.zeros(J.shape[1], dtype=J.dtype))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1e-6, 1e6])
@pytest.mark.parametrize("T", TASK_COUNTS)
def test_scaling(name: str, scale: float, T: int) -> None:
    J = rand(T, 12, 7)
    out, scaled = make(name)(J), make(name)(scale * J)
    assert torch.isfinite(scaled).all()
    degree = SCALE_DEGREE.get(name, 1)
    if degree is not None:
        expected = scale**degree * out
        assert torch.allclose(scaled, expected, rtol=1e-4, atol=1e-9 * float(expected.norm())), name


@pytest.mark.parametrize("name", [n for n in NAMES if n in NON_CONFLICTING])
def test_non_conflicting(name: str) -> None:
    limit = NON_CONFLICTING[name]
    for T in (2, 3, 5):
        if limit is not None and limit < T:
            continue
        for seed in range(6):
            J = rand(T, 4, 10 * T + seed)  # few columns: the rows conflict often
            out = make(name)(J)
            dots = J @ out
            tol = 1e-6 * float(J.norm(dim=1).max() * out.norm())
            assert (dots >= -tol).all(), f"{name} conflicts with a task at T={T}: {dots.tolist()}"
