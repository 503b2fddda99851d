"""FAB-T: the exact L∞ hyperplane projection, the contract, validity and strength of the
adversarials, determinism, and agreement with the reference implementation in torchattacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from digits_models import accuracy, check_linf_contract
from sstorch.attacks import FGSM
from sstorch.attacks.fab import (
    FABTargeted,
    _newton_radius,
    _sorted_radius,
    linf_hyperplane_projection,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # model, test_set: conftest.py


# ---------------------------------------------------------------------------------------------
# The projection


def test_projection_is_the_linear_program_optimum() -> None:
    """``min ‖δ‖_∞ s.t. w·δ = c, p + δ ∈ [0,1]`` against scipy's LP solver on random rows."""
    from scipy.optimize import linprog

    gen = torch.Generator().manual_seed(0)
    n, d = 40, 12
    p = torch.rand(n, d, generator=gen, dtype=torch.float64)
    p[:, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # points on the box faces
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w[:5, 4:] = 0  # sparse normals
    c = torch.randn(n, generator=gen, dtype=torch.float64) * torch.rand(n, generator=gen,
                                                                        dtype=torch.float64)
    c[-4:] *= 100  # unreachable inside the box
    c[0] = 0.0
    delta = linf_hyperplane_projection(p, w, c)
    assert ((p + delta) >= -1e-12).all() and ((p + delta) <= 1 + 1e-12).all()
    feasible = 0
    for i in range(n):
        # variables (δ, t): minimise t, −t ≤ δ_j ≤ t, −p ≤ δ ≤ 1 − p, w·δ = c
        eye = np.eye(d)
        a_ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
        bounds = [(-p[i, j].item(), 1 - p[i, j].item()) for j in range(d)] + [(0, None)]
        res = linprog(np.r_[np.zeros(d), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * d),
                      A_eq=np.r_[w[i].numpy(), 0.0][None], b_eq=[c[i].item()], bounds=bounds)
        if res.status == 0:
            feasible += 1
            assert (w[i] @ delta[i]).item() == pytest.approx(c[i].item(), abs=1e-9)
            assert delta[i].abs().max().item() == pytest.approx(res.fun, abs=1e-9)
        else:  # unreachable: the box corner that gets closest to the hyperplane
            best = (w[i].abs() * torch.where(w[i] * c[i] > 0, 1 - p[i], p[i])).sum()
            assert (w[i] @ delta[i]).abs().item() == pytest.approx(best.item(), abs=1e-9)
            assert (w[i] @ delta[i]).item() * c[i].item() > 0
    assert n - 4 <= feasible < n
    assert torch.equal(delta[0], torch.zeros(d, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# The contract


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_newton_radius_equals_sorted_breakpoints(scale: float) -> None:
    """The Newton water-filling root equals the sort-based one, incl. infeasible rows."""
    g = torch.Generator().manual_seed(3)
    p = torch.rand(300, 200, generator=g, dtype=torch.float64)
    p[p < 0.3] = 0  # many pixels on the box face, as in real images
    w = torch.randn(300, 200, generator=g, dtype=torch.float64)
    w[torch.rand(300, 200, generator=g) < 0.2] = 0
    c = scale * torch.randn(300, generator=g, dtype=torch.float64)
    direction = torch.sign(w) * torch.sign(c)[:, None]
    room = torch.where(direction > 0, 1 - p, p)
    weight = w.abs() * (direction != 0)
    newton = _newton_radius(room, weight, c.abs())
    exact = _sorted_radius(room, weight, c.abs())
    assert not newton.isnan().any()
    assert torch.equal(newton.isinf(), exact.isinf())
    if scale == 50.0:
        assert exact.isinf().any()  # the infeasible branch is exercised
    finite = exact.isfinite()
    torch.testing.assert_close(newton[finite], exact[finite], rtol=1e-12, atol=1e-12)
    # A zero step budget leaves rows unsettled (NaN): the projection must fall back to sorting.
    assert _newton_radius(room, weight, c.abs(), max_iter=0).isnan().any()


def test_undefended_model_is_accurate(model, test_set) -> None:
    assert accuracy(model, *test_set) > 0.85


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_output_in_eps_box_and_pixel_box(eps: float, model, test_set) -> None:
    check_linf_contract(FABTargeted(eps, n_iter=10, n_restarts=2), model, *test_set, eps)


def test_model_mode_left_alone_and_few_classes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    net.train()
    adv = FABTargeted(0.5, n_iter=5)(net, x, y)  # 9 targets asked, 2 exist
    assert net.training and (adv - x).abs().max().item() <= 0.5 + 1e-6


def test_eps_zero_and_argument_checks(model, test_set) -> None:
    x, y = test_set
    adv = FABTargeted(0.0)(model, x, y)
    assert torch.equal(adv, x) and adv.data_ptr() != x.data_ptr()
    for kwargs in ({"eps": -0.1}, {"eps": 0.1, "norm": "L2"}, {"eps": 0.1, "n_iter": 0},
                   {"eps": 0.1, "n_target_classes": 0}, {"eps": 0.1, "n_restarts": 0},
                   {"eps": 0.1, "beta": 1.0}, {"eps": 0.1, "eta": 0.9},
                   {"eps": 0.1, "alpha_max": 2.0}):
        with pytest.raises(ValueError):
            FABTargeted(**kwargs)


# ---------------------------------------------------------------------------------------------
# Validity and strength


def test_adversarials_are_valid_and_misclassified_inputs_stay(model, test_set) -> None:
    x, y = test_set
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert wrong.any()
    for eps in (0.1, 0.3):
        adv = FABTargeted(eps, n_iter=20)(model, x, y)
        changed = (adv != x).flatten(1).any(1)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        assert torch.equal(adv[wrong], x[wrong])
        assert fooled[changed].all()  # every returned perturbation is a real adversarial
        assert not fooled[~changed & ~wrong].any()  # the others are the untouched originals
        assert (adv - x).abs().max().item() <= eps + 1e-6
    assert accuracy(model, adv, y) <= 0.02  # ε = 0.3 breaks the undefended model


@pytest.mark.parametrize("eps", [0.1, 0.15])
def test_at_least_as_strong_as_fgsm(eps: float, model, test_set) -> None:
    x, y = test_set
    fab = accuracy(model, FABTargeted(eps, n_iter=20)(model, x, y), y)
    fgsm = accuracy(model, FGSM(eps)(model, x, y), y)
    assert fab <= fgsm + 0.01, (fab, fgsm)
    assert fab < accuracy(model, x, y) - 0.2


def test_deterministic_and_global_rng_untouched(model, test_set) -> None:
    x, y = test_set
    state = torch.random.get_rng_state()
    a = FABTargeted(0.1, n_iter=10, n_restarts=2, seed=1)(model, x, y)
    b = FABTargeted(0.1, n_iter=10, n_restarts=2, seed=1)(model, x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Against the reference: torchattacks 3.5.1 (installed with --no-deps; never a dependency).


def test_matches_torchattacks_fab_multi_targeted(model, test_set) -> None:
    """Robust accuracy at ε = 0.05, 0.1, 0.15, 0.2 with 20 iterations, 9 targets, 200 inputs.

    Both run the same deterministic algorithm from the same starting point (the first restart
    starts at ``x``), so they should agree up to float rounding near the boundary; tolerance:
    2 points of robust accuracy and ≥ 97 % per-example agreement (measured: identical).
    """
    torchattacks = pytest.importorskip(
        "torchattacks", reason="reference check needs torchattacks (pip install --no-deps "
                               "torchattacks==3.5.1)")
    x, y = test_set
    for eps in (0.05, 0.1, 0.15, 0.2):
        ours = FABTargeted(eps, n_iter=20)(model, x, y)
        ref = torchattacks.FAB(model, norm="Linf", eps=eps, steps=20, multi_targeted=True,
                               n_classes=10, seed=0)(x, y)
        with torch.no_grad():
            ok_ours, ok_ref = model(ours).argmax(1) == y, model(ref).argmax(1) == y
        assert abs(ok_ours.float().mean() - ok_ref.float().mean()).item() <= 0.02, eps
        assert (ok_ours == ok_ref).float().mean().item() >= 0.97, eps
