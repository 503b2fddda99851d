"""Tests for :mod:`sstorch.layers.base`: every :class:`StructuredLinear` kind answers the shared
accounting (parameters, nonzeros, dense equivalent, MACs, Lipschitz bound) consistently with
its own forward pass, and :data:`LAYERS` builds the registered baselines."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from sstorch.layers import LAYERS, LowRankLinear, SeparableLinear, StructuredLinear
from sstorch.pruning.factor import prune_factors
from sstorch.structure.init import factorize_mlp  # noqa: F401  (registers every baseline)
from sstorch.structure.surgery import densify

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")
HAS_TLTORCH = importlib.util.find_spec("tltorch") is not None
F64 = torch.float64


def _pruned_separable() -> SeparableLinear:
    layer = SeparableLinear((4, 3), (3, 5), rank=2, flatten=True, dtype=F64)
    prune_factors(layer, 0.5)
    return layer


def _tensorized(factorization: str) -> Callable[[], StructuredLinear]:
    def build() -> StructuredLinear:
        if not HAS_TLTORCH:
            pytest.skip("tensorly-torch not installed (the bench extra)")
        return LAYERS[factorization]((4, 3), (3, 5), 2, True).to(F64)
    return build


KINDS: dict[str, Callable[[], StructuredLinear]] = {
    "separable-r1": lambda: SeparableLinear((4, 3), (3, 5), flatten=True, dtype=F64),
    "separable-r3-modes": lambda: SeparableLinear((2, 3, 2), (3, 2, 2), rank=3, dtype=F64),
    "separable-pruned": _pruned_separable,
    "separable-nobias": lambda: SeparableLinear((4, 3), (3, 5), bias=False, flatten=True,
                                                dtype=F64),
    "lowrank": lambda: LowRankLinear(12, 15, 3, dtype=F64),
    "lowrank-nobias": lambda: LowRankLinear(12, 15, 2, bias=False, dtype=F64),
    "tucker": _tensorized("tucker"),
    "tt": _tensorized("tt"),
}


@pytest.fixture(params=sorted(KINDS))
def layer(request) -> StructuredLinear:
    return KINDS[request.param]()


def _flat_forward(layer: StructuredLinear, x: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to flat ``(B, N)`` inputs, returning ``(B, M)``."""
    if isinstance(layer, SeparableLinear) and not layer.flatten:
        return layer(x.reshape(-1, *layer.in_shape)).reshape(x.shape[0], -1)
    return layer(x)


def test_counts_match_the_stored_tensors(layer):
    params = list(layer.parameters())
    assert isinstance(layer, StructuredLinear)
    assert layer.n_params == sum(p.numel() for p in params)
    has_bias = layer.bias is not None
    assert layer.dense_params == layer.in_features * layer.out_features + (
        layer.out_features if has_bias else 0)
    assert layer.compression == layer.dense_params / layer.n_params
    assert layer.dense_macs_per_example() == layer.in_features * layer.out_features
    assert 0 < layer.macs_per_example()
    values = [v for _, v in layer.effective_tensors()]
    assert {id(p) for p, _ in layer.effective_tensors()} == {id(p) for p in params}
    assert layer.nnz() == sum(int(torch.count_nonzero(v)) for v in values)
    assert layer.nnz() <= layer.n_params
    assert isinstance(layer.shape_text(), str) and "→" in layer.shape_text()


def test_nnz_counts_masked_entries_as_zeros():
    layer = _pruned_separable()
    assert layer.masks()
    masked = sum(int((m == 0).sum()) for _, m in layer.masks())
    assert layer.nnz() == layer.n_params - masked - int((layer.bias == 0).sum())


def test_to_dense_is_the_forward_map(layer):
    x = torch.randn(7, layer.in_features, dtype=F64)
    w = layer.to_dense()
    assert w.shape == (layer.out_features, layer.in_features)
    bias = 0 if layer.bias is None else layer.bias
    torch.testing.assert_close(_flat_forward(layer, x), x @ w.T + bias)


def test_to_linear_computes_the_same_function(layer):
    x = torch.randn(5, layer.in_features, dtype=F64)
    dense = layer.to_linear()
    expected = _flat_forward(layer, x)
    if isinstance(layer, SeparableLinear) and not layer.flatten:
        got = dense(x.reshape(-1, *layer.in_shape)).reshape(5, -1)
    else:
        assert isinstance(dense, nn.Linear)
        got = dense(x)
    torch.testing.assert_close(got, expected)
    assert isinstance(densify(layer), nn.Module)


def test_lipschitz_bound_is_at_least_the_spectral_norm(layer):
    true_norm = float(torch.linalg.matrix_norm(layer.to_dense().detach().double(), ord=2))
    bound = layer.lipschitz_bound()
    assert bound >= true_norm * (1 - 1e-12)
    exact = not isinstance(layer, SeparableLinear) or layer.rank == 1
    if exact:
        assert bound == pytest.approx(true_norm, rel=1e-10)  # exact, not just a bound


def test_registry_builds_each_baseline_with_its_kind():
    assert {"lowrank", "tucker", "tt"} <= set(LAYERS)
    low = LAYERS["lowrank"]((4, 3), (3, 5), 2, False)
    assert isinstance(low, LowRankLinear) and low.kind == "lowrank" and low.bias is None
    assert (low.in_features, low.out_features, low.rank) == (12, 15, 2)
    with pytest.raises(ValueError, match="int rank"):
        LAYERS["lowrank"]((12,), (15,), 0.5, True)
    if HAS_TLTORCH:
        for name in ("tucker", "tt"):
            assert LAYERS[name]((4, 3), (3, 5), 2, True).kind == name


def test_register_layer_refuses_a_second_registration():
    from sstorch.layers.base import register_layer

    with pytest.raises(ValueError, match="registered already"):
        register_layer("lowrank")(lambda *a: None)


def test_the_base_is_abstract():
    with pytest.raises(TypeError):
        StructuredLinear()
    assert math.isclose(SeparableLinear((2, 2), (2, 2)).compression, 20 / 12)
