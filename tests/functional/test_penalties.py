"""Tests for :mod:`sstorch.functional.penalties`: sparsity penalties and condition-number
surrogates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sstorch.functional.penalties import (
    CONDITION_SURROGATES,
    SPARSITY_PENALTIES,
    l1_penalty,
    log_condition,
    logdet_condition,
    transformed_l1,
)

SURROGATES = [log_condition, logdet_condition]
F64 = torch.float64


def _with_singular_values(s, m: int, n: int, seed: int = 0) -> torch.Tensor:
    """Random m×n matrix ``Q1 diag(s) Q2ᵀ`` with the given singular values (float64)."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    d = min(m, n)
    return q1[:, :d] @ torch.diag(torch.as_tensor(s, dtype=F64)) @ q2[:, :d].T


def _np_logdet(u: np.ndarray) -> float:
    lam = np.linalg.svd(u, compute_uv=False) ** 2
    return float(lam.size * np.log(lam.mean()) - np.log(lam).sum())


SHAPES = [(5, 3), (3, 5), (4, 4), (8, 2), (2, 8), (6, 6), (1, 5), (5, 1)]


# ------------------------------------------------------------------------ sparsity penalties


def test_sparsity_penalties():
    w = torch.tensor([[0.0, -2.0], [0.5, 1e-4]], dtype=F64)
    assert l1_penalty(w).item() == pytest.approx(2.5001)
    a = 0.5
    expected = sum((a + 1) * abs(x) / (a + abs(x)) for x in [0.0, 2.0, 0.5, 1e-4])
    assert transformed_l1(w, a).item() == pytest.approx(expected)
    # Near 0 it is ℓ1 scaled by (a+1)/a, for large |w| it saturates at a+1.
    assert transformed_l1(torch.tensor([1e-8], dtype=F64), 2.0).item() == pytest.approx(1.5e-8)
    assert transformed_l1(torch.tensor([1e8], dtype=F64), 2.0).item() == pytest.approx(3.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="a > 0"):
            transformed_l1(w, bad)
    assert set(SPARSITY_PENALTIES) == {"l1", "tl1"}


def test_sparsity_gradcheck():
    w = (torch.rand(3, 4, dtype=F64) + 0.1) * torch.tensor([1.0, -1.0]).repeat(3, 2).to(F64)
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: transformed_l1(x, 0.7), (w,))
    assert torch.autograd.gradcheck(l1_penalty, (w,))


# ------------------------------------------------------------------- condition surrogates


@pytest.mark.parametrize("shape", SHAPES)
def test_log_condition_matches_numpy(shape):
    m, n = shape
    d = min(m, n)
    u = _with_singular_values(np.linspace(3.0, 1.0, d), m, n, seed=m * 10 + n)
    expected = np.log(np.linalg.cond(u.numpy()))
    assert log_condition(u).item() == pytest.approx(expected, abs=1e-5)
    assert log_condition(u.float()).item() == pytest.approx(expected, abs=1e-5)
    # eps = 0 is the exact log condition number, also for a generic Gaussian matrix.
    g = torch.randn(m, n, dtype=F64, generator=torch.Generator().manual_seed(d))
    assert log_condition(g, eps=0).item() == pytest.approx(
        np.log(np.linalg.cond(g.numpy())), abs=1e-9
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_logdet_condition_matches_numpy(shape):
    m, n = shape
    u = torch.randn(m, n, dtype=F64, generator=torch.Generator().manual_seed(m + 7 * n))
    assert logdet_condition(u, eps=0).item() == pytest.approx(_np_logdet(u.numpy()), abs=1e-7)
    w = _with_singular_values(np.linspace(2.0, 1.0, min(m, n)), m, n)
    assert logdet_condition(w).item() == pytest.approx(_np_logdet(w.numpy()), abs=1e-5)


def test_logdet_zero_iff_equal_singular_values():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
    equal = [torch.eye(4, dtype=F64), q, 3.7 * q[:, :2], q[:3].T, 1e-3 * q[:2], torch.ones(1, 4)]
    for u in equal:
        assert abs(logdet_condition(u).item()) < 1e-10
        assert abs(log_condition(u).item()) < 1e-10
    for _ in range(20):
        m, n = torch.randint(2, 8, (2,), generator=g).tolist()
        u = torch.randn(m, n, generator=g, dtype=F64)
        assert logdet_condition(u).item() > 1e-6
        assert log_condition(u).item() > 1e-6


def test_surrogates_increase_with_largest_singular_value():
    base = [2.0, 1.5, 1.0]
    for f in SURROGATES:
        values = [f(_with_singular_values([c, *base[1:]], 5, 3)).item() for c in (2.0, 3.0, 5.0)]
        assert values[0] < values[1] < values[2], (f.__name__, values)


def test_logdet_bounds_in_terms_of_kappa():
    """2 log cosh(log κ) ≤ logdet ≤ 2 (d−1) log κ, with equality on the left when d = 2."""
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        m, n = torch.randint(2, 9, (2,), generator=g).tolist()
        u = torch.randn(m, n, generator=g, dtype=F64) * torch.rand(1, n, generator=g, dtype=F64)
        log_kappa = log_condition(u).item()
        f = logdet_condition(u).item()
        d = min(m, n)
        lower = math.log((1 + math.exp(2 * log_kappa)) ** 2 / (4 * math.exp(2 * log_kappa)))
        assert lower == pytest.approx(2 * math.log(math.cosh(log_kappa)))
        assert lower - 1e-8 <= f <= 2 * (d - 1) * log_kappa + 1e-8
        if d == 2:
            assert f == pytest.approx(lower, abs=1e-8)


@pytest.mark.parametrize("f", SURROGATES)
def test_surrogate_scale_invariance(f):
    u = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    ref = f(u).item()
    for c in (1e-30, 1e-3, 7.0, 1e4, 1e30):
        assert f(c * u).item() == pytest.approx(ref, rel=1e-10)
    # Scale invariance ⇒ Euler: the gradient is orthogonal to U.
    v = u.clone().requires_grad_()
    f(v).backward()
    assert abs((v.grad * u).sum().item()) < 1e-10


@pytest.mark.parametrize("f", SURROGATES)
def test_surrogate_gradcheck(f):
    g = torch.Generator().manual_seed(4)
    for shape in [(4, 3), (3, 5), (2, 3, 4)]:
        u = torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (u,))


@pytest.mark.parametrize("f", SURROGATES)
def test_surrogates_on_stacks(f):
    u = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(5))
    u[1] = 0
    out = f(u)
    assert out.shape == (3,) and out.dtype == torch.float32
    for r in range(3):
        assert out[r].item() == pytest.approx(f(u[r]).item(), abs=1e-6)
    assert f(torch.randn(2, 3, 4, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="eps"):
        f(u, eps=-1.0)
    with pytest.raises(ValueError, match="floating"):
        f(torch.ones(3))


def _degenerate_matrices() -> list[torch.Tensor]:
    q = _with_singular_values([1.0, 1.0, 1.0, 1.0], 4, 4)
    a, b = torch.randn(6, 1, dtype=F64), torch.randn(1, 4, dtype=F64)
    return [
        torch.eye(5, dtype=F64),
        torch.eye(3, 5, dtype=F64),
        _with_singular_values([2.0, 2.0, 1.0], 5, 3),  # repeated largest
        _with_singular_values([3.0, 1.0, 1.0], 3, 6),  # repeated smallest
        q,
        a @ b,  # rank 1
        torch.cat([torch.randn(3, 4, dtype=F64), torch.zeros(2, 4, dtype=F64)]),  # rank 3 of 4
        torch.zeros(4, 4, dtype=F64),
        torch.zeros(1, 5, dtype=F64),
        torch.zeros(5, 1, dtype=F64),
        torch.randn(1, 7, dtype=F64),
        torch.randn(7, 1, dtype=F64),
        torch.ones(3, 3, dtype=F64),
        torch.stack([torch.eye(3, dtype=F64), torch.zeros(3, 3, dtype=F64)]),
        1e-20 * torch.randn(3, 2, dtype=F64),
        1e20 * torch.randn(2, 3, dtype=F64),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f", SURROGATES)
def test_surrogates_finite_values_and_gradients(f, dtype):
    g = torch.Generator().manual_seed(6)
    mats = []
    for _ in range(200):
        m, n = torch.randint(1, 9, (2,), generator=g).tolist()
        scale = 10.0 ** float(torch.empty(1).uniform_(-6, 6, generator=g))
        mats.append(scale * torch.randn(m, n, generator=g, dtype=F64))
    mats += _degenerate_matrices()
    for u in mats:
        x = u.to(dtype).requires_grad_()
        value = f(x)
        value.sum().backward()
        assert value.dtype == dtype
        assert torch.isfinite(value).all(), (f.__name__, u.shape)
        assert torch.isfinite(x.grad).all(), (f.__name__, u.shape)
        assert (value >= -1e-5).all()


def test_condition_surrogate_registry():
    assert CONDITION_SURROGATES == {"logkappa": log_condition, "logdet": logdet_condition}
