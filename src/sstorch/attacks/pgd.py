"""L∞ adversaries with the field's contract: ``attack(model, images, labels) -> adv_images``.

Images are in ``[0, 1]``; normalization lives inside the model, so the ε-box is in pixel
space. Every attack returns ``x_adv`` with ``‖x_adv − x‖_∞ ≤ ε`` and ``x_adv ∈ [0, 1]``, detached.
The caller chooses the model's mode (evaluation uses ``model.eval()``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FGSM", "PGD", "PGDL2", "cw_margin_loss", "kl_adversary", "trades_adversary"]


def _check(eps: float, steps: int = 1, step_size: float = 1.0) -> None:
    if not 0 <= eps <= 1:  # also rejects NaN
        raise ValueError(f"eps must be in [0, 1] (pixel scale), got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)


def cw_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` per example (positive = misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    return other.amax(1) - true


class FGSM:
    """Fast gradient sign method (Goodfellow et al. 2015), optionally from a random start.

    With ``random_start`` and ``step_size = 1.25 ε`` this is "fast adversarial training"
    (Wong et al. 2020): ``x' = Π_ε(x + δ₀ + α·sign(∇ℓ))``, ``δ₀ ~ U(−ε, ε)``.

    >>> adv = FGSM(eps=8 / 255)(model, images, labels)
    """

    def __init__(self, eps: float, step_size: float | None = None,
                 random_start: bool = False) -> None:
        self.step_size = eps if step_size is None else step_size
        _check(eps, 1, self.step_size if eps > 0 else 1.0)
        self.eps, self.random_start = eps, random_start

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        x = images.detach()
        if self.eps == 0:
            return x.clone()
        delta = torch.empty_like(x).uniform_(-self.eps, self.eps) if self.random_start \
            else torch.zeros_like(x)
        x_adv = (x + delta).clamp(0, 1).requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), labels)
        (grad,) = torch.autograd.grad(loss, x_adv)
        return _project(x_adv.detach() + self.step_size * grad.sign(), x, self.eps).detach()


class PGD:
    """L∞ projected gradient descent (Madry et al. 2018) with random restarts.

    ``x_{t+1} = Π_{B_ε(x) ∩ [0,1]}(x_t + α·sign(∇_x ℓ(f(x_t), y)))`` from ``x_0 = x + U(−ε, ε)``;
    ``loss`` is ``"ce"`` (cross-entropy) or ``"cw"`` (the CW margin). With several restarts the
    per-example result is the first restart that fools the model, else the last one.

    >>> adv = PGD(eps=8 / 255, step_size=2 / 255, steps=10)(model, images, labels)
    """

    def __init__(self, eps: float, step_size: float, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, loss: str = "ce") -> None:
        _check(eps, steps, step_size)
        if restarts < 1:
            raise ValueError(f"restarts must be ≥ 1, got {restarts}")
        if loss not in ("ce", "cw"):
            raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.restarts, self.random_start, self.loss = restarts, random_start, loss

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.loss == "cw":
            return cw_margin_loss(logits, labels).sum()
        return F.cross_entropy(logits, labels, reduction="sum")

    def _run(self, model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x_adv + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0, 1)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = self._loss(model(x_adv), labels)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + self.step_size * grad.sign(), x, self.eps)
        return x_adv.detach()

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        x = images.detach()
        if self.eps == 0:
            return x.clone()
        best = self._run(model, x, labels)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                fooled = model(best).argmax(1) != labels
            if bool(fooled.all()):
                break
            cand = self._run(model, x, labels)
            best = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), best, cand)
        return best


class PGDL2:
    """L2 projected gradient descent (Madry et al. 2018) with random restarts.

    ``x_{t+1} = Π_{B₂(x, ε) ∩ [0,1]}(x_t + α·∇ℓ/‖∇ℓ‖₂)`` from a uniform random point of the
    L2 ball; ``loss`` is ``"ce"`` or ``"cw"``. ``ε`` is an L2 radius in pixel space (it may
    exceed 1, e.g. 0.5 on CIFAR-10, 1.5 on MNIST). Per example, the first restart that fools
    the model is kept.

    >>> adv = PGDL2(eps=0.5, step_size=0.1, steps=20)(model, images, labels)
    """

    def __init__(self, eps: float, step_size: float, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, loss: str = "ce") -> None:
        if not eps >= 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a finite L2 radius ≥ 0, got {eps}")
        _check(0.0, steps, step_size)
        if restarts < 1:
            raise ValueError(f"restarts must be ≥ 1, got {restarts}")
        if loss not in ("ce", "cw"):
            raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.restarts, self.random_start, self.loss = restarts, random_start, loss

    def _project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = (self.eps / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
        return (x + delta * factor).clamp(0, 1)

    def _run(self, model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
        x_adv = x.clone()
        if self.random_start:  # uniform in the ball: random direction, radius ε·U^(1/d)
            d = x[0].numel()
            direction = torch.randn_like(x)
            direction /= direction.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            radius = self.eps * torch.rand(len(x), device=x.device) ** (1 / d)
            x_adv = self._project(x + direction * radius.view(-1, *[1] * (x.dim() - 1)), x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            loss = (cw_margin_loss(logits, labels).sum() if self.loss == "cw"
                    else F.cross_entropy(logits, labels, reduction="sum"))
            (grad,) = torch.autograd.grad(loss, x_adv)
            g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            x_adv = self._project(x_adv.detach() + self.step_size * grad / g_norm, x)
        return x_adv.detach()

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        x = images.detach()
        if self.eps == 0:
            return x.clone()
        best = self._run(model, x, labels)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                fooled = model(best).argmax(1) != labels
            if bool(fooled.all()):
                break
            cand = self._run(model, x, labels)
            best = torch.where(fooled.view(-1, *[1] * (x.dim() - 1)), best, cand)
        return best


def kl_adversary(model: nn.Module, images: Tensor, target: Tensor, eps: float,
                 step_size: float, steps: int) -> Tensor:
    """``max_{x'} KL(p ‖ f(x'))`` over the L∞ ε-box by PGD, for a fixed distribution ``p``.

    ``target`` holds ``p`` as probabilities ``(B, classes)``. Starts at ``x + 0.001·N(0, 1)``
    (TRADES); returns ``x'`` in the ε-box and [0, 1]. TRADES takes ``p = f(x)``, robust
    distillation (RSLAD) the teacher's ``p = T(x)``.
    """
    _check(eps, steps, step_size)
    x = images.detach()
    x_adv = _project((x + 0.001 * torch.randn_like(x)).clamp(0, 1), x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = _project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def trades_adversary(model: nn.Module, images: Tensor, eps: float, step_size: float,
                     steps: int) -> Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): ``max_{x'} KL(f(x) ‖ f(x'))`` by PGD.

    Starts at ``x + 0.001·N(0, 1)`` as in the paper; returns ``x'`` in the ε-box and [0, 1].
    """
    _check(eps, steps, step_size)
    x = images.detach()
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    return kl_adversary(model, x, p_clean, eps, step_size, steps)
