"""Tests for :mod:`sstorch.pruning.factor`: factor pruning with persistent masks."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sstorch.functional.kronecker import kron
from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.factor import apply_masks_, prune_factors, remove_masks_
from sstorch.pruning.masks import keep_pruned_zero

F64 = torch.float64


def _layer(in_shape, out_shape, rank=1, seed=0, **kw) -> SeparableLinear:
    torch.manual_seed(seed)
    return SeparableLinear(in_shape, out_shape, rank=rank, dtype=F64, **kw)


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
    twin = _layer((4, 5), (3, 6))
    opt, unarmed = make_opt(layer.parameters()), make_opt(twin.parameters())
    handle = keep_pruned_zero(opt, layer)
    for model, o in ((layer, opt), (twin, unarmed)):
        torch.manual_seed(1)
        _train(model, o, 5)  # momentum / moments accumulated before pruning
        prune_factors(model, 0.5)
        _train(model, o, 5)
    for k, (u, v) in enumerate(zip(layer.factors, twin.factors, strict=True)):
        masked = getattr(layer, f"mask_{k}") == 0
        assert torch.all(u[masked] == 0)
        # Without the post-step hook the optimizer would move these entries (the hook belongs
        # to `opt` alone: the twin's optimizer is not armed, and its pruned entries drift):
        state = opt.state[u]
        buf = state.get("momentum_buffer", state.get("exp_avg"))
        assert buf[masked].abs().max() > 0
        assert v[getattr(twin, f"mask_{k}") == 0].abs().max() > 0
    handle.remove()
    _train(layer, opt, 1)
    assert any((u[getattr(layer, f"mask_{k}") == 0] != 0).any()
               for k, u in enumerate(layer.factors))


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
    assert apply_masks_(fresh) == 2  # the loaded layers are pruned
    opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    keep_pruned_zero(opt, fresh)
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
    keep_pruned_zero(opt, fresh)  # armed before the model is pruned: it follows the masks
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
