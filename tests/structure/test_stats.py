"""Tests for :mod:`sstorch.structure.stats`: κ, Lipschitz and nnz of separable layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.factor import prune_factors
from sstorch.structure.stats import layer_stats

F64 = torch.float64


# ------------------------------------------------------------------------------- statistics


def _layer(in_shape, out_shape, rank=1, seed=0, **kw) -> SeparableLinear:
    torch.manual_seed(seed)
    return SeparableLinear(in_shape, out_shape, rank=rank, dtype=F64, **kw)


@pytest.mark.parametrize(
    "in_shape,out_shape", [((2, 3, 2), (3, 4, 2)), ((4, 5), (2, 3)), ((3, 3), (3, 3))]
)
def test_layer_stats_rank1_kappa_and_lipschitz(in_shape, out_shape):
    layer = _layer(in_shape, out_shape)
    (st,) = layer_stats(nn.Sequential(layer))
    w = layer.to_dense().detach().numpy()
    assert st.name == "0" and st.rank == 1 and st.full_rank
    assert st.in_shape == in_shape and st.out_shape == out_shape
    assert st.kappa == pytest.approx(np.linalg.cond(w), rel=1e-8)
    assert st.kappa == pytest.approx(math.prod(st.factor_kappa), rel=1e-12)
    assert st.lipschitz == pytest.approx(np.linalg.norm(w, 2), rel=1e-10)
    assert st.numel == sum(u.numel() for u in layer.factors) == st.nnz
    assert st.nnz_dense == w.size and st.sparsity == 0.0


def test_layer_stats_mixed_shapes_is_rank_deficient():
    layer = _layer((2, 3), (3, 2))  # tall ⊗ wide: rank(W) ≤ 2·2 < 6
    (st,) = layer_stats(layer)
    assert not st.full_rank and st.kappa == math.inf
    w = layer.to_dense().detach().numpy()
    assert np.linalg.matrix_rank(w) == 4 and np.linalg.cond(w) > 1e10


def test_layer_stats_rank2_and_pruned():
    layer = _layer((3, 4), (4, 5), rank=2)
    prune_factors(layer, 0.5)
    (st,) = layer_stats(layer)
    w = layer.to_dense().detach().numpy()
    assert st.lipschitz >= np.linalg.norm(w, 2) * (1 - 1e-12)
    assert st.kappa == pytest.approx(np.linalg.cond(w), rel=1e-8)
    assert st.nnz_dense == np.count_nonzero(w)
    assert st.nnz == sum(int((u != 0).sum()) for u in layer.factors)
    assert st.sparsity == pytest.approx(1 - st.nnz / st.numel)
    assert len(st.factor_kappa) == 2
    rank1 = _layer((3, 4), (4, 5))
    prune_factors(rank1, 0.6)
    (st1,) = layer_stats(rank1)
    w1 = rank1.to_dense().detach().numpy()
    assert st1.nnz_dense == np.count_nonzero(w1)
    assert st1.lipschitz == pytest.approx(np.linalg.norm(w1, 2), rel=1e-10)
