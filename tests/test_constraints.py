"""Tests for sstorch.structure.constraints: penalties, condition surrogates, stats, pruning,
regularizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sstorch.functional.kronecker import kron
from sstorch.functional.penalties import (
    CONDITION_SURROGATES,
    SPARSITY_PENALTIES,
    l1_penalty,
    log_condition,
    logdet_condition,
    transformed_l1,
)
from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.factor import apply_masks_, prune_factors, remove_masks_
from sstorch.structure.constraints import FactorRegularizer
from sstorch.structure.stats import layer_stats

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


# ---------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("scope", ["factor", "slice"])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_prune_reaches_target(sparsity, scope):
    layer = _layer((6, 5), (7, 4), rank=2)
    before = [u.detach().clone() for u in layer.factors]
    out = prune_factors(nn.Sequential(layer), sparsity, scope=scope)
    assert set(out) == {"0"}
    for k, (u, orig) in enumerate(zip(layer.factors, before, strict=True)):
        mask = getattr(layer, f"mask_{k}")
        assert mask.shape == u.shape and mask.dtype == u.dtype and mask.device == u.device
        assert torch.all(u[mask == 0] == 0) and torch.equal(u[mask == 1], orig[mask == 1])
        zeros = int((mask == 0).sum())
        per = u.numel() if scope == "factor" else u[0].numel()
        assert abs(zeros - sparsity * u.numel()) <= u.numel() // per  # one entry per unit
        # The survivors are the largest entries (of the factor, or of each slice).
        groups = [(orig, mask)] if scope == "factor" else list(zip(orig, mask, strict=True))
        for o, msk in groups:
            if 0 < int((msk == 0).sum()):
                assert o[msk == 1].abs().min() >= o[msk == 0].abs().max()
    assert "mask_0" in layer.state_dict()


def test_prune_keeps_one_entry_per_slice():
    layer = _layer((2, 3), (3, 2), rank=3)
    for scope in ("factor", "slice"):
        prune_factors(layer, 0.99, scope=scope)
        for u in layer.factors:
            assert torch.all((u != 0).flatten(1).sum(1) >= 1)


def test_prune_is_monotone():
    layer = _layer((5, 6), (4, 6))
    prune_factors(layer, 0.3)
    first = [getattr(layer, f"mask_{k}").clone() for k in range(2)]
    with torch.no_grad():  # the next target is ranked on new magnitudes, old zeros must stay
        for u in layer.factors:
            u.add_(torch.randn_like(u))
    prune_factors(layer, 0.6)
    second = [getattr(layer, f"mask_{k}").clone() for k in range(2)]
    for a, b, u in zip(first, second, layer.factors, strict=True):
        assert torch.all(b[a == 0] == 0)
        assert torch.all(u[a == 0] == 0)
        assert int((b == 0).sum()) == math.floor(0.6 * u.numel() + 1e-9)
    prune_factors(layer, 0.1)  # a lower target revives nothing
    for b, k in zip(second, range(2), strict=True):
        assert torch.equal(getattr(layer, f"mask_{k}"), b)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5", None])
def test_prune_invalid_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        prune_factors(_layer((2, 2), (2, 2)), bad)


def test_prune_invalid_scope_and_no_layers():
    with pytest.raises(ValueError, match="scope"):
        prune_factors(_layer((2, 2), (2, 2)), 0.5, scope="global")
    with pytest.raises(ValueError, match=r"no SeparableLinear.*separate"):
        prune_factors(nn.Linear(3, 3), 0.5)


def test_pruned_layer_output_matches_masked_dense():
    layer = _layer((4, 3), (5, 2), rank=2)
    prune_factors(layer, 0.5)
    masked = [u.detach() * getattr(layer, f"mask_{k}") for k, u in enumerate(layer.factors)]
    w = sum(kron(masked[0][r], masked[1][r]) for r in range(2))
    x = torch.randn(7, 4, 3, dtype=F64)
    y = layer(x).reshape(7, -1)
    torch.testing.assert_close(y, x.reshape(7, -1) @ w.T + layer.bias)
    torch.testing.assert_close(layer.to_dense(), w)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(16, 4, 5, dtype=F64)).pow(2).mean()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda p: torch.optim.Adam(p, lr=0.05),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_zeros_survive_optimizer_steps(make_opt):
    torch.manual_seed(0)
    layer = _layer((4, 5), (3, 6))
    opt = make_opt(layer.parameters())
    _train(layer, opt, 5)  # momentum / moments accumulated before pruning
    prune_factors(layer, 0.5)
    _train(layer, opt, 5)
    for k, u in enumerate(layer.factors):
        masked = getattr(layer, f"mask_{k}") == 0
        assert torch.all(u[masked] == 0)
        # Without the post-step hook the optimizer would move these entries:
        state = opt.state[u]
        buf = state.get("momentum_buffer", state.get("exp_avg"))
        assert buf[masked].abs().max() > 0


def test_masks_survive_safetensors_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(SeparableLinear((4, 5), (3, 6), rank=2), nn.ReLU(),
                          SeparableLinear((3, 6), (2, 2)))
    prune_factors(model, 0.6)
    path = tmp_path / "pruned.safetensors"
    save_file(model.state_dict(), str(path))
    torch.manual_seed(1)
    fresh = nn.Sequential(SeparableLinear((4, 5), (3, 6), rank=2), nn.ReLU(),
                          SeparableLinear((3, 6), (2, 2)))
    assert not hasattr(fresh[0], "mask_0")
    fresh.load_state_dict(load_file(str(path)))
    for old, new in ((model[0], fresh[0]), (model[2], fresh[2])):
        for k in range(2):
            assert torch.equal(getattr(old, f"mask_{k}"), getattr(new, f"mask_{k}"))
    x = torch.randn(8, 4, 5)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert apply_masks_(fresh) == 2  # re-arms the post-step hook for the loaded layers
    opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        fresh(torch.randn(8, 4, 5)).sum().backward()
        opt.step()
    assert torch.all(fresh[2].factors[0][fresh[2].mask_0 == 0] == 0)


def test_loaded_masks_stay_real_without_apply_masks(tmp_path):
    """A pruned checkpoint loaded into a fresh model keeps its zeros through Adam steps."""
    torch.manual_seed(0)
    model = nn.Sequential(SeparableLinear((4, 5), (3, 6)))
    prune_factors(model, 0.5)
    path = tmp_path / "pruned.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = nn.Sequential(SeparableLinear((4, 5), (3, 6)))
    opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    for _ in range(3):  # Adam moments at every entry before the masks arrive
        opt.zero_grad()
        fresh(torch.randn(8, 4, 5)).sum().backward()
        opt.step()
    fresh.load_state_dict(load_file(str(path)))
    for _ in range(3):
        opt.zero_grad()
        fresh(torch.randn(8, 4, 5)).sum().backward()
        opt.step()
    for k in range(2):
        mask = getattr(fresh[0], f"mask_{k}")
        assert (mask == 0).any()
        assert torch.all(fresh[0].factors[k][mask == 0] == 0)


def test_loading_unpruned_checkpoint_drops_stale_masks():
    torch.manual_seed(0)
    unpruned = SeparableLinear((4, 5), (3, 6))
    pruned = SeparableLinear((4, 5), (3, 6))
    prune_factors(pruned, 0.5)
    pruned.load_state_dict(unpruned.state_dict())  # strict: no missing mask keys either
    assert pruned.masks() == []
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(pruned(x), unpruned(x), rtol=0, atol=0)


def test_remove_masks():
    layer = _layer((3, 4), (3, 4))
    prune_factors(layer, 0.5)
    assert remove_masks_(layer) == 1
    assert "mask_0" not in layer.state_dict() and getattr(layer, "mask_1", None) is None
    zero_before = (layer.factors[0] == 0).sum()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    _train_shapes = torch.randn(8, 3, 4, dtype=F64)
    opt.zero_grad()
    layer(_train_shapes).pow(2).sum().backward()
    opt.step()
    assert (layer.factors[0] == 0).sum() < zero_before  # pruned entries train again
    assert remove_masks_(layer) == 0


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
