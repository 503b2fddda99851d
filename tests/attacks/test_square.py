"""Square Attack: the contract, strength, no gradients, query accounting, determinism, and
agreement with the reference implementation in torchattacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from digits_models import accuracy, check_linf_contract
from sstorch.attacks.square import Square

pytestmark = pytest.mark.usefixtures("one_thread")  # model, test_set: conftest.py


class _NoBackward(torch.autograd.Function):
    """Identity whose backward raises: any gradient use by the attack fails loudly."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise RuntimeError("a score-based attack must not ask for gradients")


class BlackBox(nn.Module):
    """The model behind a gradient wall; counts the examples it is queried on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.examples = net, 0

    def forward(self, x: Tensor) -> Tensor:
        self.examples += len(x)
        return self.net(_NoBackward.apply(x))


def test_undefended_model_is_accurate(model, test_set) -> None:
    assert accuracy(model, *test_set) > 0.85


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_output_in_eps_box_and_pixel_box(eps: float, model, test_set) -> None:
    check_linf_contract(Square(eps, n_queries=200), model, *test_set, eps)


def test_breaks_an_undefended_model_and_leaves_misclassified_inputs(model, test_set) -> None:
    x, y = test_set
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    assert wrong.any()
    adv = Square(0.3, n_queries=1000)(model, x, y)
    assert accuracy(model, adv, y) <= 0.02
    assert torch.equal(adv[wrong], x[wrong])
    assert Square(0.05, n_queries=300)(model, x, y).ne(x).any()
    assert accuracy(model, Square(0.1, n_queries=300)(model, x, y), y) < accuracy(model, x, y) - 0.2


def test_never_uses_gradients_and_counts_queries(model, test_set) -> None:
    x, y = test_set
    box = BlackBox(model)
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="must not ask for gradients"):
        box(xg).sum().backward()  # the wall works
    box.examples = 0
    attack = Square(0.1, n_queries=300)
    adv = attack(box, xg, y)  # called with grad mode on and an input that requires grad
    torch.testing.assert_close(adv, Square(0.1, n_queries=300)(model, x, y), rtol=0, atol=0)
    q = attack.queries_
    with torch.no_grad():
        clean_right = model(x).argmax(1) == y
        fooled = model(adv).argmax(1) != y
    assert q.max().item() <= 300
    assert (q[~clean_right] == 0).all() and (q[clean_right] >= 1).all()
    # Robust examples spend the whole budget; fooled ones stop early.
    assert (q[clean_right & ~fooled] == 300).all()
    assert (q[clean_right & fooled] < 300).all()
    # Only examples robust at the start of a chunk of queries are evaluated: the model saw the
    # clean check, the counted queries, and at most _CHUNK - 1 uncounted ones per fooled example.
    from sstorch.attacks.square import _CHUNK

    seen = box.examples - len(x) - q.sum().item()
    assert 0 <= seen <= (_CHUNK - 1) * int((clean_right & fooled).sum())


def test_deterministic_and_global_rng_untouched(model, test_set) -> None:
    x, y = test_set
    state = torch.random.get_rng_state()
    a = Square(0.1, n_queries=200, seed=3)(model, x, y)
    b = Square(0.1, n_queries=200, seed=3)(model, x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, Square(0.1, n_queries=200, seed=4)(model, x, y))


def test_stripe_start_and_square_schedule(model, test_set) -> None:
    x, _ = test_set
    # One query = the vertical-stripe start only: ±ε constant along each column.
    grey = torch.full_like(x, 0.5)
    with torch.no_grad():
        y_grey = model(grey).argmax(1)  # all correctly classified, so all are attacked
    adv = Square(0.05, n_queries=1, p_init=0.8)(model, grey, y_grey)
    delta = adv - 0.5
    assert torch.allclose(delta.abs(), torch.full_like(delta, 0.05))
    assert (delta == delta[:, :, :1, :]).all()
    sq = Square(0.1, n_queries=10000, p_init=0.8)
    assert [sq.p_schedule(i) for i in (0, 10, 11, 50, 51, 200, 201, 8000, 8001, 9999)] == \
        [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 256, 0.8 / 512, 0.8 / 512]
    assert Square(0.1, n_queries=1000).p_schedule(2) == 0.4  # checkpoints scale with n_queries


def test_eps_zero_and_argument_checks(model, test_set) -> None:
    x, y = test_set
    adv = Square(0.0)(model, x, y)
    assert torch.equal(adv, x) and adv.data_ptr() != x.data_ptr()
    for kwargs in ({"eps": 1.5}, {"eps": float("nan")}, {"eps": 0.1, "norm": "L2"},
                   {"eps": 0.1, "n_queries": 0}, {"eps": 0.1, "p_init": 0.0}):
        with pytest.raises(ValueError):
            Square(**kwargs)
    with pytest.raises(ValueError, match="N, C, H, W"):
        Square(0.1)(model, x.flatten(1), y)


# ---------------------------------------------------------------------------------------------
# Against the reference: torchattacks 3.5.1 (installed with --no-deps; never a dependency).


class _LastRowColumnBlind(nn.Module):
    """Zeroes the last row and column before the model sees the image (see the next test)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(F.pad(x[..., :-1, :-1], (0, 1, 0, 1)))


def test_matches_torchattacks_square(model, test_set) -> None:
    """Robust accuracy at ε = 0.1 and 0.15, 1000 queries, 200 inputs, torchattacks seeds 0–1.

    The reference (torchattacks 3.5.1, a port of AutoAttack's) draws the window corner from
    ``[0, H − s − 1]``, so after the stripe start its squares never touch the last row or
    column; on 8×8 digits that is 1/8 of each axis and makes it 7–12 points weaker than ours.
    So: (1) on a model that ignores the last row and column — where that bias cannot matter —
    the two agree within 3 points (measured: ≤ 1.5; the rest is random-search noise, the two
    draw different random numbers); (2) on the plain model ours is never weaker by more
    than 2 points (measured: 7–12 points stronger).
    """
    torchattacks = pytest.importorskip(
        "torchattacks", reason="reference check needs torchattacks (pip install --no-deps "
                               "torchattacks==3.5.1)")
    x, y = test_set
    blind = _LastRowColumnBlind(model).eval()
    for eps in (0.1, 0.15):
        ours = accuracy(blind, Square(eps, n_queries=1000, seed=0)(blind, x, y), y)
        ref = [accuracy(blind, torchattacks.Square(blind, norm="Linf", eps=eps, n_queries=1000,
                                                   p_init=0.8, seed=s)(x, y), y) for s in (0, 1)]
        assert abs(ours - sum(ref) / 2) <= 0.03, (eps, ours, ref)
        ours = accuracy(model, Square(eps, n_queries=1000, seed=0)(model, x, y), y)
        ref = accuracy(model, torchattacks.Square(model, norm="Linf", eps=eps, n_queries=1000,
                                                  p_init=0.8, seed=0)(x, y), y)
        assert ours <= ref + 0.02, (eps, ours, ref)
