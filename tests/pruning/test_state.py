"""Pruning state lives in the model's own state-dict keys, with no monkey-patching.

* the keys a pruned model writes are fixed (``<layer>.weight_mask``, ``.weight_score``,
  ``.mask_k``) and a state dict in that format loads into a freshly built model;
* only optimizers armed with :func:`sstorch.pruning.masks.keep_pruned_zero` re-zero masked
  entries (training arms its own);
* ``src/sstorch`` swaps no ``forward`` and registers no process-global optimizer hook.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sstorch.config import load_config
from sstorch.data import DATASET_INFO
from sstorch.functional.kronecker import kron
from sstorch.models import build_model
from sstorch.pruning.factor import prune_factors
from sstorch.pruning.hydra import Hydra
from sstorch.pruning.magnitude import ScoredLinear, prune_linear_
from sstorch.pruning.masks import keep_pruned_zero, zero_pruned_
from sstorch.training.optim import _optimizer

pytestmark = pytest.mark.usefixtures("one_thread", "seeded")

SRC = Path(__file__).resolve().parents[2] / "src" / "sstorch"
INFO = DATASET_INFO["digits"]  # images (1, 8, 8), 10 classes
DENSE = ("model.structure=dense", "model.hidden=[16, 16]", "constraints.lambda_sparsity=0",
         "constraints.lambda_cond=0")
SEPARABLE = ("model.hidden=[[4,4],[4,4]]", "model.rank=2")
NORMALIZE = ["normalize.mean", "normalize.std"]


def _model(*overrides: str) -> nn.Module:
    cfg = load_config(None, list(overrides))
    return build_model(cfg.model, INFO.num_classes, INFO.image_shape, INFO.mean, INFO.std)


def _keys(layers: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    return sorted(NORMALIZE + [f"net.{i}.{n}" for i in layers for n in names])


# ------------------------------------------------------------------------ state-dict keys


def test_pruned_models_write_the_same_keys_as_before():
    dense = _model(*DENSE)
    prune_linear_(dense, keep=100)
    assert sorted(dense.state_dict()) == _keys(("1", "3", "5"),
                                               ("weight", "bias", "weight_mask"))
    hydra = _model(*DENSE)
    Hydra(hydra, keep=100).attach()
    assert sorted(hydra.state_dict()) == _keys(
        ("1", "3", "5"), ("weight", "bias", "weight_mask", "weight_score"))
    assert list(hydra.state_dict())[:6] == [  # the order of a Linear's entries as well
        "normalize.mean", "normalize.std", "net.1.weight", "net.1.bias", "net.1.weight_score",
        "net.1.weight_mask"]
    separable = _model(*SEPARABLE)
    prune_factors(separable, 0.5)
    factor_keys = _keys(("1", "3"), ("bias", "factors.0", "factors.1", "mask_0", "mask_1"))
    assert sorted(separable.state_dict()) == sorted([*factor_keys, "net.5.weight",
                                                     "net.5.bias"])


def _old_dense_state(score: bool = False) -> dict[str, torch.Tensor]:
    """A state dict as the monkey-patching code wrote it: plain keys, masked weights 0."""
    g = torch.Generator().manual_seed(5)
    state = {"normalize.mean": torch.full((1, 1, 1), 0.3),
             "normalize.std": torch.full((1, 1, 1), 0.2)}
    for name, (m, n) in {"1": (16, 64), "3": (16, 16), "5": (10, 16)}.items():
        mask = (torch.rand(m, n, generator=g) < 0.3).float()
        mask[0, 0] = 1.0
        w = torch.randn(m, n, generator=g)
        state[f"net.{name}.weight"] = w if score else w * mask
        state[f"net.{name}.bias"] = torch.randn(m, generator=g)
        if score:
            state[f"net.{name}.weight_score"] = torch.rand(m, n, generator=g)
        state[f"net.{name}.weight_mask"] = mask
    return state


@pytest.mark.parametrize("score", [False, True], ids=["magnitude", "hydra-score-phase"])
def test_old_format_dense_state_loads_into_a_fresh_model(score):
    state = _old_dense_state(score)
    fresh = _model(*DENSE)
    fresh.load_state_dict(state)
    x = torch.rand(9, *INFO.image_shape)
    h = ((x - 0.3) / 0.2).flatten(1)
    for i, name in enumerate(("1", "3", "5")):
        m, w = state[f"net.{name}.weight_mask"], state[f"net.{name}.weight"]
        if score:  # the straight-through mask m + s − sg(s): value m up to rounding
            m = m + state[f"net.{name}.weight_score"] - state[f"net.{name}.weight_score"]
        w = w * m
        h = F.linear(h, w, state[f"net.{name}.bias"])
        h = h.relu() if i < 2 else h
    assert torch.equal(fresh(x), h)
    saved = fresh.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[k], v) for k, v in state.items())
    assert Hydra(fresh, keep=100).active == score
    assert all(isinstance(m, ScoredLinear) == score for m in fresh.modules()
               if isinstance(m, nn.Linear))


def test_old_format_separable_state_loads_into_a_fresh_model():
    g = torch.Generator().manual_seed(6)
    state = {"normalize.mean": torch.full((1, 1, 1), 0.3),
             "normalize.std": torch.full((1, 1, 1), 0.2)}
    for name, (m, n) in {"1": (4, 8), "3": (4, 4)}.items():
        state[f"net.{name}.bias"] = torch.randn(m * m, generator=g)
        for k in range(2):
            mask = (torch.rand(2, m, n, generator=g) < 0.5).float()
            mask[:, 0, 0] = 1.0
            state[f"net.{name}.factors.{k}"] = torch.randn(2, m, n, generator=g) * mask
            state[f"net.{name}.mask_{k}"] = mask
    state["net.5.weight"] = torch.randn(10, 16, generator=g)
    state["net.5.bias"] = torch.randn(10, generator=g)
    fresh = _model(*SEPARABLE)
    fresh.load_state_dict(state)
    x = torch.rand(9, *INFO.image_shape)
    h = ((x - 0.3) / 0.2).flatten(1)
    for name in ("1", "3"):
        u, v = state[f"net.{name}.factors.0"], state[f"net.{name}.factors.1"]
        w = kron(u[0], v[0]) + kron(u[1], v[1])
        h = F.linear(h, w, state[f"net.{name}.bias"]).relu()
    torch.testing.assert_close(fresh(x), F.linear(h, state["net.5.weight"], state["net.5.bias"]),
                               rtol=1e-5, atol=1e-4)
    saved = fresh.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[k], v) for k, v in state.items())


# ------------------------------------------------------------------ re-zeroing per optimizer


def test_the_training_optimizer_keeps_pruned_entries_zero_and_no_other_does():
    model, twin = _model(*DENSE), _model(*DENSE)
    twin.load_state_dict(model.state_dict())
    cfg = load_config(None, [*DENSE, "optim.name=sgd", "optim.momentum=0.9", "optim.lr=0.5"])
    armed = _optimizer(cfg, model)  # training's optimizer: armed
    plain = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    x, y = torch.rand(16, *INFO.image_shape), torch.randint(0, 10, (16,))
    for m, opt in ((model, armed), (twin, plain)):
        for step in range(4):
            if step == 2:
                prune_linear_(m, keep=100)  # momentum at every entry by now
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert sum(int(w.count_nonzero()) for w in weights) <= 100
    assert sum(int(m.weight.count_nonzero()) for m in twin.modules()
               if isinstance(m, nn.Linear)) > 100
    assert zero_pruned_(twin) == 3  # the explicit call puts the zeros back
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a != 0, b != 0)


def test_keep_pruned_zero_skips_hydra_score_phase():
    model = _model(*DENSE)
    prune_linear_(model, keep=100)
    hydra = Hydra(model, keep=50)
    hydra.attach()  # the weights are dense again while the scores learn
    dense = [m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.Linear)]
    assert zero_pruned_(model) == 0
    for m, w in zip([m for m in model.modules() if isinstance(m, nn.Linear)], dense,
                    strict=True):
        assert torch.equal(m.weight, w)
    hydra.finalize()
    assert zero_pruned_(model) == 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = keep_pruned_zero(opt, model)
    assert len(opt._optimizer_step_post_hooks) == 1
    handle.remove()
    assert not opt._optimizer_step_post_hooks


# -------------------------------------------------------------------------- no patching


_FORBIDDEN = {
    "types.MethodType (a forward bound to one instance)": re.compile(r"\bMethodType\b"),
    "assigning a module's forward": re.compile(r"\.forward\s*=(?!=)"),
    "a process-global optimizer hook": re.compile(r"register_optimizer_step_(post|pre)_hook"),
    "swapping an instance's class": re.compile(r"\.__class__\s*=(?!=)"),
}


def test_src_swaps_no_forward_and_installs_no_global_optimizer_hook():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = [f"{path.relative_to(SRC)}:{i}: {what}"
             for path in files
             for i, line in enumerate(path.read_text().splitlines(), 1)
             for what, pattern in _FORBIDDEN.items() if pattern.search(line)]
    assert found == []
