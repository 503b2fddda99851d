"""FGSM (Goodfellow et al. 2015), optionally from a random start (FGSM-RS, Wong et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks.base import Attack, check_positive
from sstorch.attacks.registry import register_attack

__all__ = ["FGSM"]


@register_attack("fgsm")
class FGSM(Attack):
    """Fast gradient sign method: ``x' = Π_ε(x + δ₀ + α·sign(∇_x ℓ(f(x + δ₀), y)))``.

    ``δ₀ = 0``, or ``δ₀ ~ U(−ε, ε)`` with ``random_start``; with ``step_size = 1.25 ε`` this is
    "fast adversarial training" (Wong et al. 2020). ``α`` defaults to ``ε``. ``seed=None`` (the
    default) draws the random start from torch's global RNG, as training needs.

    >>> adv = FGSM(eps=8 / 255)(model, images, labels)
    """

    def __init__(self, eps: float, step_size: float | None = None,
                 random_start: bool = False, seed: int | None = None) -> None:
        super().__init__(eps, seed=seed)
        self.step_size = eps if step_size is None else step_size
        check_positive(step_size=self.step_size if eps > 0 else 1.0)
        self.random_start = random_start

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        delta = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=gen) \
            if self.random_start else torch.zeros_like(x)
        x_adv = (x + delta).clamp(0, 1).requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), labels)
        (grad,) = torch.autograd.grad(loss, x_adv)
        return self.project(x_adv.detach() + self.step_size * grad.sign(), x)
