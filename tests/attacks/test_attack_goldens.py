"""Bit-identity of every attack with the outputs recorded before the attacks were refactored.

``attack_goldens.safetensors`` holds what the attacks returned (CPU, one thread) on a small
digits MLP trained here from seed 0 and 32 held-out digits. Each entry below must match its
tensor exactly (``torch.equal``): a refactor of :mod:`sstorch.attacks` may move code, not
numbers. After an intended change of an attack, rerun :func:`golden_outputs` and save it with
``safetensors.torch.save_file`` (and say why in the commit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from digits_models import fit, held_out, mlp
from sstorch.attacks import (
    APGD,
    FGSM,
    PGD,
    PGDL2,
    APGDTargeted,
    AutoAttack,
    kl_adversary,
    make_attack,
    trades_adversary,
)
from sstorch.attacks.fab import FABTargeted
from sstorch.attacks.square import Square

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDENS = Path(__file__).with_name("attack_goldens.safetensors")
EPS, EPS_L2 = 0.1, 1.0


def golden_model() -> nn.Module:
    """A ``[32]`` MLP trained clean for 60 steps from seed 0; global RNG left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return fit(mlp([32]), 60)


def _global(seed: int, attack, *args) -> Tensor:
    """``attack(*args)`` with torch's global RNG seeded to ``seed`` (restored after)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return attack(*args)


def golden_outputs() -> dict[str, Tensor]:
    """Every attack's output on the golden model and 32 held-out digits."""
    model = golden_model()
    x, y = held_out(32)
    square = Square(EPS, n_queries=300, seed=1)
    out = {
        "fgsm": FGSM(EPS)(model, x, y),
        "fgsm_rs": _global(3, FGSM(EPS, step_size=1.25 * EPS, random_start=True), model, x, y),
        "pgd_global": _global(0, PGD(EPS, EPS / 4, steps=5, restarts=2), model, x, y),
        "pgd_cw_global": _global(1, PGD(EPS, EPS / 4, steps=5, loss="cw"), model, x, y),
        "pgdl2_global": _global(2, PGDL2(EPS_L2, 0.2, steps=5, restarts=2), model, x, y),
        "reg_fgsm": make_attack("fgsm", EPS)(model, x, y),
        "reg_pgd": make_attack("pgd", EPS, seed=4, steps=5, restarts=2)(model, x, y),
        "reg_cw": make_attack("cw", EPS, steps=5)(model, x, y),
        "reg_pgd_l2": make_attack("pgd-l2", EPS_L2, seed=5, steps=5, restarts=2)(model, x, y),
        "apgd_ce": APGD(EPS, n_iter=10, n_restarts=2, seed=1)(model, x, y),
        "apgd_dlr_l2": APGD(EPS_L2, norm="L2", n_iter=10, loss="dlr")(model, x, y),
        "apgd_t": APGDTargeted(EPS, n_iter=10, n_target_classes=3)(model, x, y),
        "reg_apgd_t": make_attack("apgd-t", EPS, seed=2, n_iter=8)(model, x, y),
        "fab_t": FABTargeted(EPS, n_iter=10, n_target_classes=3, n_restarts=2)(model, x, y),
        "reg_fab_t": make_attack("fab-t", EPS, seed=3, n_iter=5)(model, x, y),
        "square": square(model, x, y),
        "square_queries": square.queries_,
        "reg_square": make_attack("square", EPS, n_queries=100)(model, x, y),
        "trades": _global(0, trades_adversary, model, x, EPS, EPS / 4, 5),
        "kl": _global(1, kl_adversary, model, x, torch.full((32, 10), 0.1), EPS, EPS / 4, 5),
    }
    result = AutoAttack(0.08).run(model, x, y, batch_size=20)
    out |= {"autoattack": result.x_adv, "autoattack_fooled_by": result.fooled_by,
            "autoattack_robust": result.robust}
    out["reg_autoattack_l2"] = make_attack("autoattack", EPS_L2, norm="L2", seed=1,
                                           attacks=["apgd-ce", "apgd-t"])(model, x, y)
    return {k: v.detach().contiguous() for k, v in out.items()}


def test_attacks_match_goldens() -> None:
    expected = load_file(GOLDENS)
    got = golden_outputs()
    assert sorted(got) == sorted(expected)
    x, _ = held_out(32)
    moved = [k for k in got if got[k].shape == x.shape and not torch.equal(got[k], x)]
    assert len(moved) > len(got) // 2  # the goldens are not trivially the clean inputs
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key
