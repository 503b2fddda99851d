"""Small digits models shared by the attack and evaluation tests (a few seconds to train), and
the L∞ attack contract those tests check.

scikit-learn's 8×8 digits scaled to ``[0, 1]``; the first 1400 images train, the rest test.
Every model is trained full batch with Adam (lr 1e-2) from seed 0 and returned in eval mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks import FGSM
from sstorch.config import MLPConfig
from sstorch.models import build_model

N_TRAIN = 1400


@functools.cache
def digits() -> tuple[Tensor, Tensor]:
    """All 1797 digits: images ``(N, 1, 8, 8)`` in ``[0, 1]`` and labels ``(N,)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(bunch.target)


def held_out(n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` test digits (all 397 when ``n`` is None)."""
    x, y = digits()
    return x[N_TRAIN:][:n], y[N_TRAIN:][:n]


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def mlp(hidden: list[int]) -> nn.Module:
    """sstorch's dense MLP for digits, with the normalization inside (draws its init from the
    global RNG)."""
    return build_model(MLPConfig(structure="dense", hidden=hidden), 10, (1, 8, 8),
                       (0.3053,), (0.3760,))


def fit(net: nn.Module, steps: int, fgsm_eps: float = 0.0) -> nn.Module:
    """``steps`` full-batch Adam steps (lr 1e-2) of cross-entropy on the training digits, clean
    or, with ``fgsm_eps``, on FGSM-RS adversarials (fast adversarial training, its random starts
    from the global RNG). Returns ``net`` in eval mode with its gradients cleared."""
    x, y = digits()
    x, y = x[:N_TRAIN], y[:N_TRAIN]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    fgsm = FGSM(fgsm_eps, step_size=1.25 * fgsm_eps, random_start=True) if fgsm_eps else None
    for _ in range(steps):
        xb = x if fgsm is None else fgsm(net, x, y)
        loss = F.cross_entropy(net(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    return net


def clean_mlp(steps: int) -> nn.Module:
    """An undefended ``[64]`` MLP trained clean for ``steps`` steps (≈ 90 % test accuracy at 150,
    ≈ 92 % at 200). Seeds the global RNG with 0 (and leaves it past the init draws, as the tests
    calibrated on it always did); the parameters stay trainable, so a test can check that an
    attack leaves no gradient on them."""
    torch.manual_seed(0)
    return fit(mlp([64]), steps)


def frozen(hidden: list[int], steps: int, fgsm_eps: float) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = fit(mlp(hidden), steps, fgsm_eps)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@functools.cache
def undefended() -> nn.Module:
    """Clean training, 300 steps (≈ 92 % test accuracy); frozen, global RNG untouched."""
    return frozen([64], 300, 0.0)


@functools.cache
def fgsm_trained() -> nn.Module:
    """Fast adversarial training (FGSM-RS at ε = 0.1, ≈ 99 % clean test accuracy, ≈ 45 %
    robust at ε = 0.15): a model on which attack strength matters. Frozen, global RNG untouched."""
    return frozen([128, 128], 300, 0.1)


def check_linf_contract(attack: Callable[[nn.Module, Tensor, Tensor], Tensor], model: nn.Module,
                        x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Run ``attack(model, x, y)`` on a copy of ``x`` that requires grad (as a caller's tensor
    may) and check the contract: same shape and dtype, detached, inside the ε-box around ``x``
    and the pixel box ``[0, 1]``, the input untouched and without a gradient, no gradient left
    on the model's parameters, and some pixel moved. Returns the adversarial batch."""
    xg = x.clone().requires_grad_(True)
    adv = attack(model, xg, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert not adv.requires_grad and adv.grad_fn is None
    assert (adv - x).abs().max().item() <= eps + 1e-6
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
    assert torch.equal(xg.detach(), x) and xg.grad is None
    assert all(p.grad is None for p in model.parameters())
    assert (adv != x).any()  # it did move
    return adv
