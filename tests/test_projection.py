"""Tests for cluctl.projection (GEM / A-GEM projections)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from cluctl import projection as proj
from cluctl.errors import UsageError
from cluctl.projection import (
    IMPLS,
    ProjectionInfo,
    QPFailed,
    agem_project,
    gem_project,
    gem_step,
    solve_dual_from_gram,
)


def make_problem(t: int, p: int, seed: int, n_neg: int | None = None):
    """Random float32 (g, G) with some rows negatively correlated with g."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(p, generator=gen)
    G = torch.randn(t, p, generator=gen)
    k = max(1, t // 2) if n_neg is None else n_neg
    G[:k] = -0.8 * g + 0.6 * G[:k]
    return g, G


def assert_constraints(x, G, info, margin, eps_tol=1e-6):
    """<x, g_j> >= -eps v_j - 1e-6 |x||g_j| and v >= margin (both in float64)."""
    assert info.v is not None and info.v.shape == (G.shape[0],)
    x64, G64 = x.double(), G.double()
    dots = (G64 @ x64).numpy()
    bound = -info.eps * info.v - eps_tol * float(x64.norm()) * G64.norm(dim=1).numpy()
    assert np.all(dots >= bound), (dots - bound).min()
    assert np.all(info.v >= margin - 1e-8)


# ---------------------------------------------------------------- fast == classic


@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("p", [10, 1000, 50_000])
@pytest.mark.parametrize("t", [1, 2, 5, 19])
def test_fast_matches_classic(t, p, margin):
    for seed in range(3):
        g, G = make_problem(t, p, seed)
        xc, ic = gem_project(g, G, margin, impl="classic")
        xf, if_ = gem_project(g, G, margin, impl="fast")
        assert xc.dtype == xf.dtype == torch.float32
        assert xc.shape == xf.shape == g.shape
        assert ic.projected and if_.projected and not ic.fallback and not if_.fallback
        assert ic.eps == if_.eps
        assert float((xf - xc).norm()) <= 1e-5 * float(xc.norm())
        np.testing.assert_allclose(if_.v, ic.v, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- constraints


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("t,p", [(1, 10), (2, 1000), (5, 50_000), (19, 10), (19, 1000)])
def test_constraints_hold(impl, margin, t, p):
    g, G = make_problem(t, p, seed=7)
    x, info = gem_project(g, G, margin, impl=impl)
    assert info.projected and not info.fallback and info.eps == 1e-3
    assert_constraints(x, G, info, margin)


def test_margin_pushes_further():
    g, G = make_problem(3, 200, seed=1)
    x0, _ = gem_project(g, G, 0.0)
    x5, _ = gem_project(g, G, 0.5)
    # a larger margin makes the projected step more aligned with the references
    assert float((G @ x5).sum()) > float((G @ x0).sum())


def test_solve_dual_from_gram_kkt():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((4, 30))
    g = -G[0] + 0.1 * rng.standard_normal(30)
    v, eps = solve_dual_from_gram(G @ G.T, G @ g, margin=0.0)
    assert eps == 1e-3 and np.all(v >= -1e-12)
    # stationarity: (GG^T + eps I) v + Gg = lambda >= 0, complementary to v
    lam = (G @ G.T + eps * np.eye(4)) @ v + G @ g
    assert np.all(lam >= -1e-9)
    assert abs(float(lam @ v)) < 1e-9


# ---------------------------------------------------------------- gem_step


@pytest.mark.parametrize("impl", IMPLS)
def test_gem_step_no_violation_returns_g(impl):
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(100, generator=gen)
    G = torch.stack([g + 0.1 * torch.randn(100, generator=gen) for _ in range(4)])
    assert bool(((G @ g) > 0).all())
    x, info = gem_step(g, G, margin=0.5, impl=impl)
    assert x is g
    assert info == ProjectionInfo(projected=False, fallback=False, eps=1e-3, v=None)


@pytest.mark.parametrize("impl", IMPLS)
def test_gem_step_projects_on_violation(impl):
    g, G = make_problem(4, 100, seed=4, n_neg=1)
    assert bool(((G @ g) < 0).any())
    x, info = gem_step(g, G, margin=0.0, impl=impl)
    xp, _ = gem_project(g, G, margin=0.0, impl=impl)
    assert info.projected and not info.fallback
    assert torch.equal(x, xp)
    assert not torch.equal(x, g)
    assert_constraints(x, G, info, 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_gem_step_zero_rows(impl):
    g = torch.randn(20)
    x, info = gem_step(g, torch.empty(0, 20), margin=0.5, impl=impl)
    assert x is g and not info.projected and info.v is None
    x, info = gem_project(g, torch.empty(0, 20), margin=0.5, impl=impl)
    assert x is g and not info.projected


def test_bad_impl_is_usage_error():
    g, G = make_problem(2, 10, 0)
    for fn in (gem_project, gem_step):
        with pytest.raises(UsageError) as err:
            fn(g, G, 0.0, impl="turbo")
        assert "classic" in str(err.value) and "fast" in str(err.value)


# ---------------------------------------------------------------- A-GEM


def test_agem_formula_and_constraint():
    gen = torch.Generator().manual_seed(5)
    ref = torch.randn(500, generator=gen)
    g = -0.7 * ref + 0.3 * torch.randn(500, generator=gen)
    assert float(g @ ref) < 0
    x, info = agem_project(g, ref)
    assert info.projected and not info.fallback and info.v is None
    g64, r64 = g.double(), ref.double()
    expected = (g64 - (g64 @ r64) / (r64 @ r64) * r64).float()
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-7)
    assert float(x.double() @ r64) >= -1e-6 * float(x.norm() * ref.norm())


def test_agem_unchanged_when_not_violated_or_zero_ref():
    g = torch.randn(50)
    x, info = agem_project(g, g.clone() + 0.01)
    assert x is g and not info.projected
    x, info = agem_project(g, torch.zeros(50))
    assert x is g and not info.projected


# ---------------------------------------------------------------- QP failure paths


@pytest.mark.parametrize("impl", IMPLS)
def test_fallback_when_quadprog_always_fails(impl, monkeypatch):
    calls = []

    def boom(*args, **kwargs):
        calls.append(args[0][0, 0])
        raise ValueError("constraints are inconsistent, no solution")

    monkeypatch.setattr(proj.quadprog, "solve_qp", boom)
    g, G = make_problem(3, 64, seed=2)
    x, info = gem_project(g, G, margin=0.5, impl=impl)
    assert len(calls) == 3  # eps = 1e-3, 1e-2, 1e-1
    assert info.fallback and info.v is None and info.eps == pytest.approx(1e-1)
    expected, ainfo = agem_project(g, G.mean(0))
    assert torch.equal(x, expected) and info.projected == ainfo.projected
    with pytest.raises(QPFailed):
        solve_dual_from_gram(np.eye(2), np.ones(2), 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_retry_after_first_failure_uses_eps_1e2(impl, monkeypatch):
    real = proj.quadprog.solve_qp
    state = {"n": 0}

    def flaky(*args, **kwargs):
        state["n"] += 1
        if state["n"] == 1:
            raise ValueError("matrix G is not positive definite")
        return real(*args, **kwargs)

    monkeypatch.setattr(proj.quadprog, "solve_qp", flaky)
    g, G = make_problem(3, 64, seed=2)
    x, info = gem_project(g, G, margin=0.0, impl=impl)
    assert state["n"] == 2
    assert info.projected and not info.fallback and info.eps == pytest.approx(1e-2)
    assert_constraints(x, G, info, 0.0)


def test_nan_gradients_fall_back():
    g, G = make_problem(2, 16, seed=0)
    G[0, 3] = float("nan")
    _, info = gem_project(g, G, margin=0.0)
    assert info.fallback and info.v is None


# ---------------------------------------------------------------- property test


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(1, 6),
    p=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    margin=st.sampled_from([0.0, 0.1, 0.5]),
    impl=st.sampled_from(IMPLS),
    scale=st.floats(1e-2, 1e2),
)
def test_property_constraints(t, p, seed, margin, impl, scale):
    g, G = make_problem(t, p, seed)
    g, G = g * scale, G * scale
    x, info = gem_project(g, G, margin, impl=impl)
    assert not info.fallback
    assert torch.isfinite(x).all()
    assert_constraints(x, G, info, margin)
