"""Dense pruning of ``nn.Linear`` weights (:mod:`sstorch.pruning.magnitude`) with persistent
masks, HYDRA score learning (:mod:`sstorch.pruning.hydra`) and sparse inference
(:mod:`sstorch.pruning.sparse`), on small MLPs and the Fashion-MNIST MLP (no data needed).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sstorch.config import load_config
from sstorch.data import DATASET_INFO
from sstorch.eval.common import frozen
from sstorch.io.checkpoint import load_checkpoint, save_checkpoint
from sstorch.models import build_model
from sstorch.pruning.hydra import Hydra
from sstorch.pruning.magnitude import (
    ScoredLinear,
    keep_schedule,
    prune_linear_,
    remove_linear_masks_,
)
from sstorch.pruning.masks import keep_pruned_zero
from sstorch.pruning.sparse import SparseLinear, sparse_inference
from sstorch.structure.summary import summary

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")


def _nnz(model: nn.Module) -> int:
    return summary(model).total_nnz


def _fmnist_model(*overrides: str) -> nn.Module:
    cfg = load_config(None, list(overrides))
    info = DATASET_INFO["fashion-mnist"]
    return build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)


# --------------------------------------------------------------------------- pruning


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(),
                         nn.Linear(30, 5))


def _weight_nnz(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(m.weight)) for m in model.modules()
               if isinstance(m, nn.Linear))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_keeps_exactly_the_requested_weights(scope):
    model = _mlp()
    biases = 30 + 30 + 5
    kept = prune_linear_(model, keep=97, scope=scope)
    assert sum(kept.values()) == 97 == _weight_nnz(model)
    assert summary(model).total_nnz == 97 + biases  # biases are not pruned
    assert all(n >= 1 for n in kept.values())
    if scope == "layer":  # the same fraction everywhere: 97 · (600, 900, 150) / 1650
        assert kept == {"0": 35, "2": 53, "4": 9}
    else:  # the largest |w| overall, except for up to 3 protected layer maxima
        w = torch.cat([m.weight.detach().abs().flatten() for m in _mlp().modules()
                       if isinstance(m, nn.Linear)])
        mask = torch.cat([m.weight_mask.flatten() for m in model.modules()
                          if isinstance(m, nn.Linear)]) > 0
        assert float(w[mask].sort().values[3]) >= float(w[~mask].max())
    # 10 % of the 1,650 weights is more than is left: nothing masked is revived
    assert sum(prune_linear_(model, sparsity=0.9, scope=scope).values()) == 97
    assert _weight_nnz(model) == 97


def test_sparse_inference_computes_the_same_function_and_input_gradients():
    """A pruned Linear at ≤ 10 % density runs with a CSR weight inside the block (values and
    input gradients equal to the dense product), a denser one stays dense, and everything is
    restored afterwards; evaluation (`frozen`) uses it."""
    model = _mlp()
    kept = prune_linear_(model, keep=60, scope="layer")  # ≤ 10 % of every layer
    with torch.no_grad():  # the head back to 100 % dense, still carrying a mask
        model[4].weight.copy_(_mlp()[4].weight)
        model[4].weight_mask.fill_(1)
    assert sum(kept.values()) == 60
    x = torch.rand(7, model[0].in_features, requires_grad=True)
    dense_y = model(x)
    (dense_g,) = torch.autograd.grad(dense_y.square().sum(), x)
    originals = list(model)
    keys = list(model.state_dict())
    with sparse_inference(model) as n:
        assert n == 2
        assert [type(m) for m in (model[0], model[2], model[4])] == [
            SparseLinear, SparseLinear, nn.Linear]
        assert model[0].csr_weight.layout == torch.sparse_csr
        assert model[0].weight is originals[0].weight  # shared, not copied
        assert model[0].weight_mask is originals[0].weight_mask
        assert list(model.state_dict()) == keys
        y = model(x)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        with sparse_inference(model) as inner:  # nested: nothing swapped twice
            assert inner == 0
        assert isinstance(model[0], SparseLinear)
    torch.testing.assert_close(y, dense_y, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g, dense_g, atol=1e-6, rtol=1e-5)
    assert all(a is b for a, b in zip(model, originals, strict=True))  # put back
    assert not any(isinstance(m, SparseLinear) or "forward" in vars(m) for m in model.modules())
    with frozen(model):
        assert isinstance(model[0], SparseLinear)
        torch.testing.assert_close(model(x), dense_y, atol=1e-6, rtol=1e-5)
    assert type(model[0]) is nn.Linear and model[0] is originals[0]
    with sparse_inference(_mlp()) as none:  # nothing pruned: nothing to do
        assert none == 0


def test_pruning_schedule_is_monotone_and_geometric():
    assert keep_schedule(1_000_000, 100, 0.0) == 1_000_000
    assert keep_schedule(1_000_000, 100, 0.5) == 10_000
    assert keep_schedule(1_000_000, 100, 1.0) == 100
    model = _mlp()
    masks = []
    for k in (800, 300, 97):
        prune_linear_(model, keep=k)
        masks.append(torch.cat([m.weight_mask.flatten() for m in model.modules()
                                if isinstance(m, nn.Linear)]))
        assert _weight_nnz(model) == k
    assert bool((masks[2] <= masks[1]).all() and (masks[1] <= masks[0]).all())
    with pytest.raises(ValueError, match="keep must be an int"):
        prune_linear_(model, keep=2)  # fewer than one weight per layer
    assert remove_linear_masks_(model) == 3 and not hasattr(model[0], "weight_mask")


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_masked_weights_stay_zero_through_momentum_and_weight_decay(opt_name):
    model = _mlp()
    prune_linear_(model, keep=60)
    masks = [m.weight_mask.clone() for m in model.modules() if isinstance(m, nn.Linear)]
    opt = (torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True,
                           weight_decay=1e-2) if opt_name == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=1e-2))
    keep_pruned_zero(opt, model)
    x, y = torch.randn(32, 20), torch.randint(0, 5, (32,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer, mask in zip(layers, masks, strict=True):
        assert bool((layer.weight[mask == 0] == 0).all())
    assert _weight_nnz(model) <= 60
    # the momentum buffers are nonzero at masked entries: without the hook they would revive
    assert any(bool((opt.state[layer.weight].get("momentum_buffer",
                                                 opt.state[layer.weight].get("exp_avg"))
                     [mask == 0] != 0).any()) for layer, mask in zip(layers, masks, strict=True))


def test_pruned_checkpoint_loads_into_a_fresh_model_with_its_masks(tmp_path):
    """The fresh ImageClassifier has no mask buffers: loading creates them, so an optimizer
    armed with keep_pruned_zero keeps the zeros when training goes on after loading."""
    model = _fmnist_model("model.structure=dense", "model.hidden=[16, 16]")
    prune_linear_(model, keep=500)
    nnz = _nnz(model)
    save_checkpoint(tmp_path / "p.safetensors", model)
    fresh = _fmnist_model("model.structure=dense", "model.hidden=[16, 16]")
    assert not hasattr(fresh.net[1], "weight_mask")
    load_checkpoint(tmp_path / "p.safetensors", fresh, restore_rng=False)
    assert _nnz(fresh) == nnz and _weight_nnz(fresh) == 500
    torch.testing.assert_close(fresh.net[1].weight_mask, model.net[1].weight_mask)
    opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    keep_pruned_zero(opt, fresh)
    for _ in range(3):
        opt.zero_grad()
        fresh(torch.rand(8, 1, 28, 28)).logsumexp(1).sum().backward()
        opt.step()
    assert _weight_nnz(fresh) <= 500
    # and an unpruned state drops the masks again (the state decides)
    fresh.load_state_dict(_fmnist_model("model.structure=dense",
                                        "model.hidden=[16, 16]").state_dict())
    assert not hasattr(fresh.net[1], "weight_mask")


# --------------------------------------------------------------------------- HYDRA


def test_hydra_starts_at_the_magnitude_mask_and_learns_scores_straight_through():
    model = _mlp()
    dense = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]
    ref = copy.deepcopy(model)
    prune_linear_(ref, keep=97)
    hydra = Hydra(model, keep=97, momentum=0.9)
    assert not hydra.active
    before = list(model)
    hydra.attach()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is ScoredLinear for m in layers)
    assert all(m.weight is b.weight for m, b in zip(layers, before[::2], strict=True))
    refs = [m for m in ref.modules() if isinstance(m, nn.Linear)]
    for layer, r in zip(layers, refs, strict=True):
        torch.testing.assert_close(layer.weight_mask, r.weight_mask)
    assert not any(p.requires_grad for p in model.parameters())
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    loss = F.cross_entropy(model(x), y)
    ref_loss = F.cross_entropy(ref(x), y)  # the same function: W ⊙ m
    torch.testing.assert_close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    for layer, r, w in zip(layers, refs, dense, strict=True):  # ∂L/∂s = W ⊙ ∂L/∂(W ⊙ m)
        torch.testing.assert_close(layer.weight_score.grad, w * r.weight.grad)
        assert layer.weight.grad is None
    masks = [m.weight_mask.clone() for m in layers]
    for _ in range(20):  # scores move, masks follow, weights stay dense and unchanged
        hydra.optimizer.param_groups[0]["lr"] = 0.5
        hydra.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        hydra.optimizer.step()
        hydra.update_masks()
        assert sum(int(m.weight_mask.sum()) for m in layers) == 97
    assert any(not torch.equal(a, m.weight_mask) for a, m in zip(masks, layers, strict=True))
    for layer, w in zip(layers, dense, strict=True):
        torch.testing.assert_close(layer.weight, w)
    assert summary(model).total_nnz == 97 + 65  # the effective (masked) weights
    kept = hydra.finalize()
    assert sum(kept.values()) == 97 == _weight_nnz(model) and not hydra.active
    assert all(p.requires_grad for p in model.parameters())
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is nn.Linear and not hasattr(m, "weight_score") for m in layers)
    assert sorted(model.state_dict()) == sorted(ref.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    keep_pruned_zero(opt, model)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert _weight_nnz(model) <= 97


def test_hydra_state_loads_into_a_fresh_model_mid_score_phase(tmp_path):
    model = _fmnist_model("model.structure=dense", "model.hidden=[16, 16]")
    hydra = Hydra(model, keep=300)
    hydra.attach()
    x = torch.rand(4, 1, 28, 28)
    save_checkpoint(tmp_path / "h.safetensors", model)
    fresh = _fmnist_model("model.structure=dense", "model.hidden=[16, 16]")
    load_checkpoint(tmp_path / "h.safetensors", fresh, restore_rng=False)
    torch.testing.assert_close(fresh(x), model(x))  # scored forward, dense weights kept
    assert _weight_nnz(fresh) > 300 and _nnz(fresh) == 300 + 16 + 16 + 10
    assert Hydra(fresh, keep=300).active  # a resumed run continues the score phase
