"""The :class:`Attack` base class: what every attack of :mod:`sstorch.attacks` shares.

The contract, as in torchattacks and AutoAttack: ``attack(model, images, labels) -> adv_images``
with images in ``[0, 1]`` (normalization inside the model), the output detached, inside the
threat model ``‖x_adv − x‖_p ≤ ε`` (``p ∈ {∞, 2}``) and inside ``[0, 1]``. The caller chooses the
model's mode (evaluation uses ``model.eval()``).

The base owns the argument checks (:func:`check_eps`, :func:`check_counts`,
:func:`check_positive`, :func:`check_labels`), the random generator of an attack (``seed``), the
projection onto ``B_ε(x) ∩ [0, 1]^d`` and the restart loop of PGD (:meth:`Attack.best_of_restarts`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["NORMS", "Attack", "check_counts", "check_eps", "check_labels", "check_positive",
           "per_example", "project_linf"]

NORMS = ("Linf", "L2")


def check_eps(eps: float, norm: str = "Linf") -> float:
    """``eps`` if it is a valid radius for ``norm``, else ``ValueError``.

    L∞: ``0 ≤ ε ≤ 1`` (pixel scale; a box over ``[0, 1]`` never needs more). L2: ``ε`` finite
    and ``≥ 0`` (it may exceed 1, e.g. 0.5 on CIFAR-10, 1.5 on MNIST). NaN is refused for both.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "Linf" and not 0 <= eps <= 1:  # also rejects NaN
        raise ValueError(f"eps must be in [0, 1] (pixel scale) for Linf, got {eps}")
    if norm == "L2" and not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite L2 radius ≥ 0, got {eps}")
    return eps


def check_counts(**counts: int) -> None:
    """``ValueError`` for the first count (steps, restarts, iterations, …) below 1."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value}")


def check_positive(**values: float) -> None:
    """``ValueError`` for the first value (a step size, …) that is not ``> 0`` (NaN included)."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def check_labels(images: Tensor, labels: Tensor) -> None:
    """``ValueError`` unless ``images`` is a batch ``(N, ...)`` and ``labels`` is ``(N,)``."""
    if images.dim() < 2 or labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},) for images of shape "
                         f"{tuple(images.shape)}, got {tuple(labels.shape)}")


def project_linf(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """``Π(x_adv) = clip_[0,1](min(max(x_adv, x − ε), x + ε))``: the nearest point of
    ``B_∞(x, ε) ∩ [0, 1]^d`` (the box is separable, so clipping twice is the projection)."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)


def per_example(t: Tensor, like: Tensor) -> Tensor:
    """``t`` of shape ``(N,)`` viewed as ``(N, 1, …, 1)`` to broadcast against ``like``."""
    return t.view(-1, *[1] * (like.dim() - 1))


class Attack:
    """An adversary ``attack(model, images, labels) -> adv_images`` with radius ``eps``.

    :meth:`__call__` checks the inputs, detaches the images, returns them unchanged for ``ε = 0``
    or an empty batch, and otherwise calls :meth:`perturb` with the attack's generator: a fresh
    ``torch.Generator`` seeded with ``seed`` on each call (on the images' device, or on
    :attr:`generator_device`), or ``None`` for ``seed=None`` (torch's global RNG). A subclass
    implements :meth:`perturb`, and may override :meth:`check_inputs` and :meth:`reset` (Square's
    image shape and query counts), :meth:`project` (APGD's reference round-off),
    :attr:`generator_device` (FAB draws on the CPU) and :meth:`generator` (AutoAttack's
    components seed their own).

    Parameters
    ----------
    eps : float
        Radius of the threat model in pixel units (see :func:`check_eps`).
    norm : str
        ``"Linf"`` or ``"L2"``, one of the subclass's :attr:`norms`.
    seed : int or None
        Seed of the attack's own generator; ``None`` draws from torch's global RNG.
    """

    #: The norms the attack implements.
    norms: tuple[str, ...] = NORMS
    #: Device of the attack's generator; ``None``: the images' device.
    generator_device: str | None = None

    def __init__(self, eps: float, *, norm: str = "Linf", seed: int | None = 0) -> None:
        if norm not in self.norms:
            raise ValueError(f"{type(self).__name__} implements norm in {self.norms}, "
                             f"got {norm!r}")
        self.eps, self.norm, self.seed = check_eps(eps, norm), norm, seed

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """``x_adv`` (detached) for ``images`` in ``[0, 1]`` of shape ``(N, ...)``."""
        self.check_inputs(images, labels)
        x = images.detach()
        self.reset(x)
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        return self.perturb(model, x, labels, self.generator(x.device)).detach()

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        """The attack proper, on a detached non-empty batch ``x`` with ``ε > 0``."""
        raise NotImplementedError

    def check_inputs(self, images: Tensor, labels: Tensor) -> None:
        """Refuse malformed inputs (``ValueError``); the default accepts everything."""

    def reset(self, x: Tensor) -> None:
        """Clear what the previous call recorded (e.g. Square's query counts)."""

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A new generator seeded with :attr:`seed`, or ``None`` (global RNG) for ``seed=None``."""
        if self.seed is None:
            return None
        return torch.Generator(device=self.generator_device or device).manual_seed(self.seed)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Nearest point of ``B_p(x, ε) ∩ [0, 1]^d``.

        L∞: :func:`project_linf`. L2: ``δ ← δ · min(1, ε / ‖δ‖₂)`` (``‖δ‖₂`` clamped to
        ``≥ 1e-12``), then ``clip_[0,1](x + δ)``; clipping moves every coordinate towards
        ``x ∈ [0, 1]``, so the result stays in the ball.
        """
        if self.norm == "Linf":
            return project_linf(x_adv, x, self.eps)
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = per_example((self.eps / norms).clamp(max=1.0), x)
        return (x + delta * factor).clamp(0, 1)

    def best_of_restarts(self, run: Callable[..., Tensor], model: nn.Module, x: Tensor,
                         labels: Tensor, gen: torch.Generator | None, restarts: int) -> Tensor:
        """``run(model, x, labels, gen)`` up to ``restarts`` times, per example the first result
        that fools the model, else the last one; stops once every example is fooled."""
        best = run(model, x, labels, gen)
        for _ in range(restarts - 1):
            with torch.no_grad():
                fooled = model(best).argmax(1) != labels
            if bool(fooled.all()):
                break
            cand = run(model, x, labels, gen)
            best = torch.where(per_example(fooled, x), best, cand)
        return best
