"""Projected gradient descent (Madry et al. 2018) in L∞ (:class:`PGD`) and L2 (:class:`PGDL2`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks.base import Attack, check_counts, check_positive
from sstorch.attacks.losses import cw_margin_loss
from sstorch.attacks.registry import register_attack

__all__ = ["PGD", "PGDL2"]


class PGD(Attack):
    """L∞ projected gradient descent (Madry et al. 2018) with random restarts.

    ``x_{t+1} = Π_{B_ε(x) ∩ [0,1]}(x_t + α·sign(∇_x ℓ(f(x_t), y)))`` from ``x_0 = x + U(−ε, ε)``;
    ``loss`` is ``"ce"`` (cross-entropy) or ``"cw"`` (the CW margin). With several restarts the
    per-example result is the first restart that fools the model, else the last one.
    ``seed=None`` (the default) draws from torch's global RNG.

    >>> adv = PGD(eps=8 / 255, step_size=2 / 255, steps=10)(model, images, labels)
    """

    def __init__(self, eps: float, step_size: float, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, loss: str = "ce", seed: int | None = None) -> None:
        super().__init__(eps, norm=self.norms[0], seed=seed)
        check_counts(steps=steps)
        check_positive(step_size=step_size)
        check_counts(restarts=restarts)
        if loss not in ("ce", "cw"):
            raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
        self.step_size, self.steps = step_size, steps
        self.restarts, self.random_start, self.loss = restarts, random_start, loss

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.loss == "cw":
            return cw_margin_loss(logits, labels).sum()
        return F.cross_entropy(logits, labels, reduction="sum")

    def _start(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """``x + U(−ε, ε)`` clipped to ``[0, 1]``."""
        return (x.clone() + torch.empty_like(x).uniform_(-self.eps, self.eps, generator=gen)
                ).clamp_(0, 1)

    def _step(self, x_adv: Tensor, grad: Tensor, x: Tensor) -> Tensor:
        return self.project(x_adv + self.step_size * grad.sign(), x)

    def _run(self, model: nn.Module, x: Tensor, labels: Tensor,
             gen: torch.Generator | None) -> Tensor:
        x_adv = self._start(x, gen) if self.random_start else x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = self._loss(model(x_adv), labels)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self._step(x_adv.detach(), grad, x)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        return self.best_of_restarts(self._run, model, x, labels, gen, self.restarts)


class PGDL2(PGD):
    """L2 projected gradient descent (Madry et al. 2018) with random restarts.

    ``x_{t+1} = Π_{B₂(x, ε) ∩ [0,1]}(x_t + α·∇ℓ/‖∇ℓ‖₂)`` from a uniform random point of the
    L2 ball; ``loss`` is ``"ce"`` or ``"cw"``. ``ε`` is an L2 radius in pixel space (it may
    exceed 1, e.g. 0.5 on CIFAR-10, 1.5 on MNIST). Per example, the first restart that fools
    the model is kept.

    >>> adv = PGDL2(eps=0.5, step_size=0.1, steps=20)(model, images, labels)
    """

    norms = ("L2",)

    def _start(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """Uniform in the ball: a random direction, radius ``ε·U^(1/d)``."""
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        direction /= direction.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        radius = self.eps * torch.rand(len(x), generator=gen, device=x.device) ** (1 / d)
        return self.project(x + direction * radius.view(-1, *[1] * (x.dim() - 1)), x)

    def _step(self, x_adv: Tensor, grad: Tensor, x: Tensor) -> Tensor:
        g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        return self.project(x_adv + self.step_size * grad / g_norm, x)


def _madry(eps: float, steps: int, step_size: float | None) -> float:
    """Madry's step ``2.5 ε / steps`` unless given (1.0 for ε = 0: the input is returned)."""
    if step_size is None:
        step_size = 2.5 * eps / steps
    return 1.0 if eps == 0 else step_size


@register_attack("pgd")
def _pgd(eps: float, seed: int | None = 0, steps: int = 50, step_size: float | None = None,
         **kwargs: Any) -> PGD:
    return PGD(eps, _madry(eps, steps, step_size), steps=steps, loss="ce", seed=seed, **kwargs)


@register_attack("cw")
def _cw(eps: float, seed: int | None = 0, steps: int = 50, step_size: float | None = None,
        **kwargs: Any) -> PGD:
    return PGD(eps, _madry(eps, steps, step_size), steps=steps, loss="cw", seed=seed, **kwargs)


@register_attack("pgd-l2")
def _pgd_l2(eps: float, seed: int | None = 0, steps: int = 50, step_size: float | None = None,
            **kwargs: Any) -> PGDL2:
    """L2 PGD; ``eps`` is an L2 radius in pixel space."""
    step_size = (2.5 * eps / steps if eps > 0 else 1.0) if step_size is None else step_size
    return PGDL2(eps, step_size, steps=steps, seed=seed, **kwargs)
