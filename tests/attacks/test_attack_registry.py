"""make_attack: every registered attack keeps the contract and is deterministic under its seed."""

from __future__ import annotations

import warnings

import pytest
import torch

from digits_models import accuracy, held_out, undefended
from sstorch.attacks.autoattack import AutoAttack
from sstorch.attacks.base import Attack
from sstorch.attacks.pgd import PGD
from sstorch.attacks.registry import ATTACKS, make_attack

EPS = 0.1
FAST = {"apgd-ce": {"n_iter": 10}, "apgd-t": {"n_iter": 10, "n_target_classes": 2},
        "fab-t": {"n_iter": 10, "n_target_classes": 2}, "square": {"n_queries": 200},
        "autoattack": {"attacks": ["apgd-ce", "apgd-t"]}}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, seed: int = 0):
    return make_attack(name, EPS, seed=seed, **FAST.get(name, {}))


def test_registry_names() -> None:
    assert set(ATTACKS) == {"fgsm", "pgd", "cw", "pgd-l2", "apgd-ce", "apgd-t", "fab-t",
                            "square", "autoattack"}
    with pytest.raises(ValueError, match="apgd-ce") as err:
        make_attack("apgd", EPS)
    assert "choose from" in str(err.value)


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"pgd-l2"}))  # L∞ attacks
def test_contract_and_determinism(name: str) -> None:
    model, (x, y) = undefended(), held_out(64)
    attack = build(name)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        adv = attack(model, x, y)
        again = build(name)(model, x, y)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG left alone
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert (adv - x).abs().max().item() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert accuracy(model, adv, y) < accuracy(model, x, y)
    assert torch.equal(adv, again)


def test_defaults_and_overrides() -> None:
    pgd = make_attack("pgd", 0.1)
    assert isinstance(pgd, PGD) and pgd.seed == 0
    assert (pgd.steps, pgd.restarts, pgd.loss) == (50, 1, "ce")
    assert pgd.step_size == pytest.approx(2.5 * 0.1 / 50)
    cw = make_attack("cw", 0.1, steps=20, restarts=3, seed=7)
    assert (cw.steps, cw.restarts, cw.loss, cw.seed) == (20, 3, "cw", 7)
    apgd = make_attack("apgd-ce", 0.1, n_iter=30)
    assert (apgd.n_iter, apgd.loss, apgd.n_restarts) == (30, "ce", 1)
    assert make_attack("apgd-t", 0.1).n_target_classes == 9
    aa = make_attack("autoattack", 0.1, seed=2)
    assert isinstance(aa, AutoAttack) and aa.seed == 2 and aa.version == "standard"
    assert torch.equal(make_attack("pgd", 0.0)(undefended(), *held_out(4)), held_out(4)[0])


def test_pgd_l2_contract_and_determinism() -> None:
    model, (x, y) = undefended(), held_out(64)
    radius = 1.0  # L2, pixel space; 8×8 digits
    state = torch.get_rng_state()
    adv = make_attack("pgd-l2", radius, steps=20)(model, x, y)
    again = make_attack("pgd-l2", radius, steps=20)(model, x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert (adv - x).flatten(1).norm(dim=1).max().item() <= radius + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1 and not adv.requires_grad
    assert accuracy(model, adv, y) < 0.5 * accuracy(model, x, y)
    assert torch.equal(adv, again)
    assert torch.equal(make_attack("pgd-l2", 0.0)(model, x, y), x)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_registered_attack_is_an_attack(name: str) -> None:
    """One base for all: ε = 0 and an empty batch return the input, global RNG untouched."""
    model, (x, y) = undefended(), held_out(8)
    attack = build(name)
    assert isinstance(attack, Attack) and attack.seed == 0
    state = torch.get_rng_state()
    zero = make_attack(name, 0.0, **FAST.get(name, {}))(model, x, y)
    assert torch.equal(zero, x) and zero.data_ptr() != x.data_ptr()
    empty = attack(model, x[:0], y[:0])
    assert empty.shape == x[:0].shape
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_seed_none_draws_from_the_global_rng(name: str) -> None:
    """``seed=None``, the base's contract: the attack draws from torch's global RNG."""
    model, (x, y) = undefended(), held_out(16)
    kwargs = FAST[name] | ({"n_restarts": 2} if name == "fab-t" else {})
    torch.manual_seed(0)
    a = make_attack(name, EPS, seed=None, **kwargs)(model, x, y)
    torch.manual_seed(0)
    b = make_attack(name, EPS, seed=None, **kwargs)(model, x, y)
    assert torch.equal(a, b)
