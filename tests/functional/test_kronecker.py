"""Tests for :mod:`sstorch.functional.kronecker`: Kronecker algebra, mode products, nearest
Kronecker.

Every reference is built independently of the code under test: dense weights come from explicit
``torch.kron`` chains (kron_reference.py) or from the index definition of the mode product
(einsum, below), and the Van Loan–Pitsianis optimum is recomputed with numpy (kron_reference.py).
"""

from __future__ import annotations

import math
import random
import string

import pytest
import torch

from kron_reference import F64, explicit_dense, random_factors
from sstorch.functional.kronecker import kron, kron_sum, mode_products

pytestmark = pytest.mark.usefixtures("seeded")  # the global RNG at seed 0 for every test


# --------------------------------------------------------------------------- references


def einsum_mode_products(x: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """``Y[b, i_1..i_K] = Σ_r Σ_j X[b, j_1..j_K] Π_k U_k[r, i_k, j_k]`` from the definition."""
    k = len(factors)
    ins, outs = string.ascii_lowercase[:k], string.ascii_uppercase[:k]
    eq = "z" + ins + "," + ",".join(f"y{o}{i}" for o, i in zip(outs, ins, strict=True))
    return torch.einsum(eq + "->z" + outs, x, *factors)


def random_shapes(k: int, seed: int, lo: int = 1, hi: int = 5):
    rng = random.Random(seed)
    return ([rng.randint(lo, hi) for _ in range(k)], [rng.randint(lo, hi) for _ in range(k)])


# --------------------------------------------------------------------------- kron / kron_sum


def test_kron_is_row_major_kronecker_product():
    a = torch.arange(6, dtype=F64).reshape(2, 3)
    b = torch.arange(4, dtype=F64).reshape(2, 2) + 1
    w = kron(a, b)
    assert w.shape == (4, 6)
    for i1 in range(2):
        for i2 in range(2):
            for j1 in range(3):
                for j2 in range(2):
                    assert w[i1 * 2 + i2, j1 * 2 + j2] == a[i1, j1] * b[i2, j2]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_kron_matches_torch_kron_chain(k):
    out_shape, in_shape = random_shapes(k, seed=k)
    mats = [f[0] for f in random_factors(1, out_shape, in_shape, seed=k)]
    expected = mats[0]
    for m in mats[1:]:
        expected = torch.kron(expected, m)
    torch.testing.assert_close(kron(*mats), expected, rtol=0, atol=0)


def test_kron_without_matrices_raises():
    with pytest.raises(ValueError, match="at least one"):
        kron()


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_kron_sum_matches_explicit_sum(k, rank):
    out_shape, in_shape = random_shapes(k, seed=10 * k + rank)
    factors = random_factors(rank, out_shape, in_shape, seed=rank)
    w = kron_sum(factors)
    assert w.shape == (math.prod(out_shape), math.prod(in_shape))
    torch.testing.assert_close(w, explicit_dense(factors), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------- mode_products


@pytest.mark.parametrize(
    ("rank", "strategy"),
    [(1, "auto"), (1, "left"), (1, "cyclic"), (1, "unfold"), (2, "auto"), (2, "cyclic"),
     (3, "cyclic"), (1, "dense"), (3, "dense")],
)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_mode_products_matches_dense_and_definition(k, rank, strategy):
    out_shape, in_shape = random_shapes(k, seed=100 * k + rank)
    factors = random_factors(rank, out_shape, in_shape, seed=k + rank)
    x = torch.randn(3, *in_shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    y = mode_products(x, factors, strategy=strategy)
    assert y.shape == (3, *out_shape)
    w = explicit_dense(factors)
    torch.testing.assert_close(y.flatten(1), x.flatten(1) @ w.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, einsum_mode_products(x, factors), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [
        ((12, 2, 3), (4, 5, 2)),  # leading mode dominates
        ((2, 6, 5), (3, 2, 4)),  # trailing modes dominate
        ((7,), (3,)),  # K = 1
        ((1, 5), (4, 1)),  # unit modes
    ],
)
def test_strategies_agree(in_shape, out_shape):
    factors = random_factors(1, out_shape, in_shape, seed=3)
    x = torch.randn(4, *in_shape, dtype=F64)
    cyclic = mode_products(x, factors, strategy="cyclic")
    unfold = mode_products(x, factors, strategy="unfold")
    auto = mode_products(x, factors)
    torch.testing.assert_close(cyclic, unfold, rtol=1e-12, atol=1e-12)
    left = mode_products(x, factors, strategy="left")
    torch.testing.assert_close(left, cyclic, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(auto, cyclic, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        cyclic.flatten(1), x.flatten(1) @ explicit_dense(factors).T, rtol=1e-12, atol=1e-12
    )


def test_auto_materializes_only_when_cheaper_and_never_while_tracing():
    from sstorch.functional.kronecker import _auto_strategy

    # (28,28)->(32,32): mode products cost R·53,760 MACs per example vs M·N = 802,816.
    assert _auto_strategy(128, (28, 28), (32, 32), 1) == "left"
    assert _auto_strategy(128, (28, 28), (32, 32), 8) == "cyclic"
    assert _auto_strategy(128, (28, 28), (32, 32), 44) == "dense"
    assert _auto_strategy(1, (28, 28), (32, 32), 44) == "cyclic"  # materializing W costs R·M·N
    factors = [f.float() for f in random_factors(44, (8, 8), (7, 7), seed=2)]
    x = torch.randn(64, 7, 7)
    expected = mode_products(x, factors, strategy="cyclic")
    torch.testing.assert_close(mode_products(x, factors), expected, rtol=1e-4, atol=1e-4)
    traced = torch.jit.trace(lambda t: mode_products(t, factors), (x,), check_trace=False)
    assert "einsum" not in str(traced.graph)
    torch.testing.assert_close(traced(x), expected, rtol=1e-4, atol=1e-4)


def test_mode_products_non_contiguous_input():
    factors = random_factors(2, (3, 4), (5, 6), seed=1)
    x = torch.randn(6, 5, 4, dtype=F64).permute(2, 1, 0)  # (4, 5, 6), non-contiguous
    assert not x.is_contiguous()
    expected = x.contiguous().flatten(1) @ explicit_dense(factors).T
    torch.testing.assert_close(mode_products(x, factors).flatten(1), expected)


@pytest.mark.parametrize("strategy", ["unfold", "left"])
def test_rank_one_strategies_refuse_rank_above_one(strategy):
    factors = random_factors(2, (3, 4), (5, 6))
    with pytest.raises(ValueError, match="rank 1"):
        mode_products(torch.randn(2, 5, 6, dtype=F64), factors, strategy=strategy)


@pytest.mark.parametrize("strategy", ["", "materialize", "Cyclic", "unfolded"])
def test_unknown_strategy_raises(strategy):
    factors = random_factors(1, (3, 4), (5, 6))
    with pytest.raises(ValueError, match=f"got {strategy!r}"):
        mode_products(torch.randn(2, 5, 6, dtype=F64), factors, strategy=strategy)


def test_mode_products_gradcheck():
    factors = [f.requires_grad_() for f in random_factors(2, (2, 3, 2), (3, 2, 2), seed=5)]
    x = torch.randn(2, 3, 2, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *fs: mode_products(x, list(fs)), (x, *factors))
