"""Tests for :mod:`sstorch.functional.nearest`: the nearest Kronecker sum of a dense weight."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from kron_reference import F64, explicit_dense, random_factors, vlp_optimal_error
from sstorch.functional.nearest import nearest_kronecker

pytestmark = pytest.mark.usefixtures("seeded")  # the global RNG at seed 0 for every test


# --------------------------------------------------------------------------- nearest_kronecker


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [((4, 5), (3, 6)), ((2, 3, 4), (3, 2, 2)), ((2, 3, 2, 2), (2, 2, 3, 1))],
    ids=["K2", "K3", "K4"],
)
def test_nearest_kronecker_exact_for_kronecker_product(in_shape, out_shape):
    factors = random_factors(1, out_shape, in_shape, seed=11)
    w = explicit_dense(factors)
    found, err = nearest_kronecker(w, in_shape, out_shape)
    expected_shapes = [(1, m, n) for m, n in zip(out_shape, in_shape, strict=True)]
    assert [tuple(f.shape) for f in found] == expected_shapes
    assert err < 1e-10
    torch.testing.assert_close(explicit_dense(found), w, rtol=1e-10, atol=1e-12)


def test_nearest_kronecker_exact_for_rank2_sum_k2():
    in_shape, out_shape = (4, 5), (3, 6)
    w = explicit_dense(random_factors(2, out_shape, in_shape, seed=12))
    found, err = nearest_kronecker(w, in_shape, out_shape, rank=2)
    assert err < 1e-10
    torch.testing.assert_close(explicit_dense(found), w, rtol=1e-10, atol=1e-12)
    # One term is not enough for a generic rank-2 sum.
    _, err1 = nearest_kronecker(w, in_shape, out_shape, rank=1)
    assert err1 > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_kronecker_rank2_sum_k3_cp_als(seed):
    # CP-ALS stops at ~1e-9..1e-8 on these (its error estimate cancels below sqrt(eps)).
    in_shape, out_shape = (3, 4, 2), (2, 3, 4)
    w = explicit_dense(random_factors(2, out_shape, in_shape, seed=20 + seed))
    found, err = nearest_kronecker(w, in_shape, out_shape, rank=2)
    assert err < 1e-6
    true_err = float((w - explicit_dense(found)).norm() / w.norm())
    assert true_err < 1e-6
    assert err == pytest.approx(true_err, abs=1e-12)


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "rank"),
    [((4, 5), (3, 6), 1), ((4, 5), (3, 6), 3), ((2, 3, 4), (3, 2, 2), 1),
     ((2, 3, 4), (3, 2, 2), 2), ((2, 2, 2, 3), (2, 3, 1, 2), 1)],
)
def test_nearest_kronecker_reported_error_is_true_error(in_shape, out_shape, rank):
    w = torch.randn(math.prod(out_shape), math.prod(in_shape), dtype=F64)
    found, err = nearest_kronecker(w, in_shape, out_shape, rank=rank)
    true_err = float((w - explicit_dense(found)).norm() / w.norm())
    assert 0 < err <= 1
    assert err == pytest.approx(true_err, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_nearest_kronecker_k2_is_van_loan_pitsianis_optimum(rank):
    in_shape, out_shape = (4, 3), (5, 2)
    w = torch.randn(10, 12, dtype=F64, generator=torch.Generator().manual_seed(rank))
    found, err = nearest_kronecker(w, in_shape, out_shape, rank=rank)
    optimum = vlp_optimal_error(w.numpy(), in_shape, out_shape, rank)
    assert err == pytest.approx(optimum, rel=1e-10, abs=1e-13)
    assert float((w - explicit_dense(found)).norm() / w.norm()) == pytest.approx(optimum, rel=1e-9)


def test_nearest_kronecker_k2_error_non_increasing_in_rank():
    in_shape, out_shape = (4, 3), (5, 2)  # rearranged matrix is 20 x 6: at most 6 terms
    w = torch.randn(10, 12, dtype=F64, generator=torch.Generator().manual_seed(0))
    errors = [nearest_kronecker(w, in_shape, out_shape, rank=r)[1] for r in range(1, 8)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(errors))
    assert errors[0] > errors[4]  # strictly better somewhere, not constant
    assert errors[5] < 1e-10 and errors[6] < 1e-10  # full rank (and beyond) is exact


def test_nearest_kronecker_rank_above_available_terms_is_padded():
    in_shape, out_shape = (2, 1), (1, 2)  # rearranged matrix is 2 x 2: at most 2 terms
    w = torch.randn(2, 2, dtype=F64)
    found, err = nearest_kronecker(w, in_shape, out_shape, rank=4)
    assert [tuple(f.shape) for f in found] == [(4, 1, 2), (4, 2, 1)]
    assert all(torch.isfinite(f).all() for f in found)
    assert err < 1e-12
    torch.testing.assert_close(explicit_dense(found), w)


@pytest.mark.parametrize(("in_shape", "out_shape"), [((3, 4), (2, 3)), ((2, 2, 3), (1, 2, 3))])
def test_nearest_kronecker_zero_weight(in_shape, out_shape):
    w = torch.zeros(math.prod(out_shape), math.prod(in_shape), dtype=F64)
    found, err = nearest_kronecker(w, in_shape, out_shape)
    assert err == 0.0
    for f in found:
        assert torch.isfinite(f).all()
    assert explicit_dense(found).abs().max() == 0


def test_nearest_kronecker_single_mode_returns_weight():
    w = torch.randn(3, 5, dtype=F64)
    found, err = nearest_kronecker(w, (5,), (3,))
    assert err == 0.0
    assert len(found) == 1 and found[0].shape == (1, 3, 5)
    torch.testing.assert_close(found[0][0], w, rtol=0, atol=0)
    found[0].add_(1)  # a copy, not a view of the weight
    assert not torch.equal(found[0][0], w)
    with pytest.raises(ValueError, match="rank=1"):
        nearest_kronecker(w, (5,), (3,), rank=2)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize(("in_shape", "out_shape"), [((4, 5), (3, 6)), ((2, 3, 4), (3, 2, 2))])
def test_nearest_kronecker_balances_factor_norms(in_shape, out_shape, rank):
    w = torch.randn(math.prod(out_shape), math.prod(in_shape), dtype=F64)
    found, _ = nearest_kronecker(w, in_shape, out_shape, rank=rank)
    for r in range(rank):
        norms = torch.stack([f[r].norm() for f in found])
        torch.testing.assert_close(norms, norms.mean().expand_as(norms), rtol=1e-10, atol=0)


def test_nearest_kronecker_keeps_dtype_and_detaches():
    w = torch.randn(6, 12, requires_grad=True)  # float32
    found, err = nearest_kronecker(w, (3, 4), (2, 3))
    assert all(f.dtype == torch.float32 and not f.requires_grad for f in found)
    assert isinstance(err, float) and 0 < err <= 1


@pytest.mark.parametrize(
    ("shape", "in_shape", "out_shape"),
    [((6, 11), (3, 4), (2, 3)), ((7, 12), (3, 4), (2, 3)), ((12, 6), (3, 4), (2, 3)),
     ((72,), (3, 4), (2, 3)), ((2, 6, 12), (3, 4), (2, 3))],
)
def test_nearest_kronecker_wrong_weight_shape_raises(shape, in_shape, out_shape):
    w = torch.randn(*shape, dtype=F64)
    with pytest.raises(ValueError, match=r"\(6, 12\).*got " + re.escape(str(shape))):
        nearest_kronecker(w, in_shape, out_shape)


def test_nearest_kronecker_mismatched_modes_raises():
    # Same products (12 = 3*4, 6 = 6), different number of modes: must be a clear ValueError,
    # not an error from deep inside the rearrangement.
    with pytest.raises(ValueError, match="modes"):
        nearest_kronecker(torch.randn(6, 12, dtype=F64), (3, 4), (6,))
