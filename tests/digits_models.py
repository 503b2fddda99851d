"""Small digits models shared by the attack tests (trained once per session, a few seconds).

scikit-learn's 8×8 digits scaled to ``[0, 1]``; the first 1400 images train, the rest test.
Both models are MLPs with the normalization inside, in eval mode, trained with a fixed seed.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks import FGSM
from sstorch.config import ModelConfig
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
    x, y = digits()
    return x[N_TRAIN:][:n], y[N_TRAIN:][:n]


def _train(hidden: list[int], steps: int, fgsm_eps: float) -> nn.Module:
    x, y = digits()
    x, y = x[:N_TRAIN], y[:N_TRAIN]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model(ModelConfig(name="mlp", separable=False, hidden=hidden), 10, (1, 8, 8),
                          (0.3053,), (0.3760,))
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
        p.requires_grad_(False)
        p.grad = None
    return net


@functools.cache
def undefended() -> nn.Module:
    """Clean training, 300 full-batch Adam steps (≈ 92 % test accuracy)."""
    return _train([64], 300, 0.0)


@functools.cache
def fgsm_trained() -> nn.Module:
    """Fast adversarial training (FGSM-RS at ε = 0.1, ≈ 99 % clean test accuracy, ≈ 45 %
    robust at ε = 0.15): a model on which attack strength matters."""
    return _train([128, 128], 300, 0.1)
