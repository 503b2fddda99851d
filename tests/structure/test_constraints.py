"""Tests for :mod:`sstorch.structure.constraints`: the :class:`FactorRegularizer`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sstorch.functional.penalties import (
    CONDITION_SURROGATES,
    SPARSITY_PENALTIES,
)
from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.factor import prune_factors
from sstorch.structure.constraints import FactorRegularizer

F64 = torch.float64


def _layer(in_shape, out_shape, rank=1, seed=0, **kw) -> SeparableLinear:
    torch.manual_seed(seed)
    return SeparableLinear(in_shape, out_shape, rank=rank, dtype=F64, **kw)


# ------------------------------------------------------------------------------ regularizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        SeparableLinear((4, 5), (3, 6), rank=2, dtype=F64),
        nn.Tanh(),
        SeparableLinear((3, 6), (2, 3), dtype=F64),
    )


@pytest.mark.parametrize("sparsity,cond", [("l1", "logdet"), ("tl1", "logkappa")])
def test_regularizer_value_and_gradient(sparsity, cond):
    model = _model()
    prune_factors(model, 0.3)
    reg = FactorRegularizer(model, lambda_sparsity=1e-2, lambda_cond=0.5, sparsity=sparsity,
                            cond=cond, a=0.7)
    value = reg()
    s = sum(SPARSITY_PENALTIES[sparsity](u, *([0.7] if sparsity == "tl1" else []))
            for m in (model[0], model[2]) for u in m.effective_factors())
    c = sum(CONDITION_SURROGATES[cond](u[r]) for m in (model[0], model[2])
            for u in m.effective_factors() for r in range(u.shape[0]))
    torch.testing.assert_close(value, 1e-2 * s + 0.5 * c)
    assert reg.last["sparsity"] == pytest.approx(s.item())
    assert reg.last["cond"] == pytest.approx(c.item())
    assert reg.last["total"] == pytest.approx(value.item())
    value.backward()
    for m in (model[0], model[2]):
        for k, u in enumerate(m.factors):
            assert u.grad is not None and torch.isfinite(u.grad).all()
            assert u.grad.abs().sum() > 0
            assert torch.all(u.grad[getattr(m, f"mask_{k}") == 0] == 0)


def test_regularizer_logkappa_is_log_condition_of_dense_weight():
    layer = _layer((2, 3, 2), (3, 4, 2))
    reg = FactorRegularizer(layer, lambda_cond=1.0, cond="logkappa", eps=0)
    w = layer.to_dense().detach().numpy()
    assert reg().item() == pytest.approx(np.log(np.linalg.cond(w)), abs=1e-9)


def test_regularizer_zero_weights_computes_nothing():
    model = _model()
    reg = FactorRegularizer(model)
    value = reg()
    assert value.item() == 0.0 and value.dim() == 0 and value.dtype == F64
    assert reg.last == {"sparsity": 0.0, "cond": 0.0, "total": 0.0}
    (value + model[0].factors[0].sum()).backward()  # usable in a loss
    assert FactorRegularizer(nn.Linear(2, 2))().item() == 0.0  # no layers is fine when λ = 0
    only_s = FactorRegularizer(model, lambda_sparsity=1.0)
    only_s()
    assert only_s.last["cond"] == 0.0 and only_s.last["sparsity"] > 0


def test_regularizer_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"choose one of \['l1', 'tl1'\]"):
        FactorRegularizer(model, lambda_sparsity=1.0, sparsity="l2")
    with pytest.raises(ValueError, match=r"choose one of \['logdet', 'logkappa'\]"):
        FactorRegularizer(model, lambda_cond=1.0, cond="svd")
    with pytest.raises(ValueError, match="lambda_cond"):
        FactorRegularizer(model, lambda_cond=-1.0)
    with pytest.raises(ValueError, match="lambda_sparsity"):
        FactorRegularizer(model, lambda_sparsity=-0.1)
    with pytest.raises(ValueError, match=r"no SeparableLinear.*separate"):
        FactorRegularizer(nn.Sequential(nn.Linear(3, 3)), lambda_cond=1.0)


def test_regularizer_through_ddp_wrapper(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0,
                            world_size=1)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        value = FactorRegularizer(ddp, lambda_cond=1.0)()
        torch.testing.assert_close(value, FactorRegularizer(model, lambda_cond=1.0)())
    finally:
        dist.destroy_process_group()
