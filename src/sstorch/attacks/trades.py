"""The KL adversaries of TRADES (Zhang et al. 2019) and robust distillation (RSLAD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks.base import check_counts, check_eps, check_positive, project_linf

__all__ = ["kl_adversary", "trades_adversary"]


def _check(eps: float, step_size: float, steps: int) -> None:
    check_eps(eps)
    check_counts(steps=steps)
    check_positive(step_size=step_size)


def kl_adversary(model: nn.Module, images: Tensor, target: Tensor, eps: float,
                 step_size: float, steps: int) -> Tensor:
    """``max_{x'} KL(p ‖ f(x'))`` over the L∞ ε-box by PGD, for a fixed distribution ``p``.

    ``target`` holds ``p`` as probabilities ``(B, classes)``. Starts at ``x + 0.001·N(0, 1)``
    (TRADES, from torch's global RNG); returns ``x'`` in the ε-box and [0, 1]. TRADES takes
    ``p = f(x)``, robust distillation (RSLAD) the teacher's ``p = T(x)``.
    """
    _check(eps, step_size, steps)
    x = images.detach()
    x_adv = project_linf((x + 0.001 * torch.randn_like(x)).clamp(0, 1), x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = project_linf(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def trades_adversary(model: nn.Module, images: Tensor, eps: float, step_size: float,
                     steps: int) -> Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): ``max_{x'} KL(f(x) ‖ f(x'))`` by PGD.

    Starts at ``x + 0.001·N(0, 1)`` as in the paper; returns ``x'`` in the ε-box and [0, 1].
    """
    _check(eps, step_size, steps)
    x = images.detach()
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    return kl_adversary(model, x, p_clean, eps, step_size, steps)
