"""One entry point for every attack: ``make_attack(name, eps, seed=0, **kwargs)``.

================  ===========================================================================
name              attack (defaults)
================  ===========================================================================
``fgsm``          :class:`~sstorch.attacks.pgd.FGSM`, one signed-gradient step of size ε
``pgd``           :class:`~sstorch.attacks.pgd.PGD`, CE loss, 50 steps of 2.5ε/50, 1 restart
``cw``            :class:`~sstorch.attacks.pgd.PGD` on the CW margin, 50 steps of 2.5ε/50
``pgd-l2``        :class:`~sstorch.attacks.pgd.PGDL2`, CE loss, 50 steps of 2.5ε/50 (ε an L2 radius)
``apgd-ce``       :class:`~sstorch.attacks.apgd.APGD`, CE loss, 100 iterations
``apgd-t``        :class:`~sstorch.attacks.apgd.APGDTargeted`, DLR-T loss, 9 targets, 100 iterations
``fab-t``         ``sstorch.attacks.fab.FABTargeted``, 9 targets, 100 iterations
``square``        ``sstorch.attacks.square.Square``, 5000 queries
``autoattack``    :class:`~sstorch.attacks.autoattack.AutoAttack`, the standard version
================  ===========================================================================

Every attack has the contract ``attack(model, images, labels) -> adv_images`` (L∞ unless
``norm=`` says otherwise) and is deterministic under ``seed``: the attacks of
:mod:`sstorch.attacks.pgd`, which draw from torch's global RNG, run under that seed in a forked RNG
state, so the caller's global RNG is left as it was. Keyword arguments go to the attack's
constructor (``make_attack("pgd", 8 / 255, steps=20, restarts=5)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sstorch.attacks.apgd import APGD, APGDTargeted
from sstorch.attacks.autoattack import AutoAttack
from sstorch.attacks.pgd import FGSM, PGD, PGDL2

__all__ = ["ATTACKS", "Attack", "SeededAttack", "make_attack"]

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


class SeededAttack:
    """Runs ``attack`` with torch's global RNG seeded to ``seed``, restoring the RNG after.

    >>> attack = SeededAttack(PGD(8 / 255, 2 / 255, steps=10), seed=0)
    >>> adv_images = attack(model, images, labels)   # the same every call
    """

    def __init__(self, attack: Attack, seed: int = 0) -> None:
        self.attack, self.seed = attack, seed

    def __repr__(self) -> str:
        return f"SeededAttack({self.attack!r}, seed={self.seed})"

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        devices = [images.device] if images.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(self.seed)
            if images.is_cuda:
                with torch.cuda.device(images.device):
                    torch.cuda.manual_seed(self.seed)
            return self.attack(model, images, labels)


def _pgd(eps: float, seed: int, loss: str, steps: int = 50, step_size: float | None = None,
         restarts: int = 1, **kwargs: Any) -> Attack:
    step_size = 2.5 * eps / steps if step_size is None else step_size
    if eps == 0:
        step_size = 1.0  # PGD checks step_size > 0; with ε = 0 it returns the input anyway
    return SeededAttack(PGD(eps, step_size, steps=steps, restarts=restarts, loss=loss, **kwargs),
                        seed)


def _pgd_l2(eps: float, seed: int, steps: int = 50, step_size: float | None = None,
            **kwargs: Any) -> Attack:
    """L2 PGD; ``eps`` is an L2 radius in pixel space."""
    step_size = (2.5 * eps / steps if eps > 0 else 1.0) if step_size is None else step_size
    return SeededAttack(PGDL2(eps, step_size, steps=steps, **kwargs), seed)


def _lazy(module: str, cls: str) -> Callable[..., Attack]:
    def make(eps: float, seed: int = 0, **kwargs: Any) -> Attack:
        return getattr(importlib.import_module(module), cls)(eps, seed=seed, **kwargs)
    return make


ATTACKS: dict[str, Callable[..., Attack]] = {
    "fgsm": lambda eps, seed=0, **kw: SeededAttack(FGSM(eps, **kw), seed),
    "pgd": lambda eps, seed=0, **kw: _pgd(eps, seed, "ce", **kw),
    "cw": lambda eps, seed=0, **kw: _pgd(eps, seed, "cw", **kw),
    "pgd-l2": lambda eps, seed=0, **kw: _pgd_l2(eps, seed, **kw),
    "apgd-ce": lambda eps, seed=0, **kw: APGD(eps, seed=seed, **{"loss": "ce", **kw}),
    "apgd-t": lambda eps, seed=0, **kw: APGDTargeted(eps, seed=seed, **kw),
    "fab-t": _lazy("sstorch.attacks.fab", "FABTargeted"),
    "square": _lazy("sstorch.attacks.square", "Square"),
    "autoattack": lambda eps, seed=0, **kw: AutoAttack(eps, seed=seed, **kw),
}


def make_attack(name: str, eps: float, seed: int = 0, **kwargs: Any) -> Attack:
    """The attack registered as ``name`` (see the module docstring), with radius ``eps``.

    Raises ``ValueError`` for an unknown name and ``ModuleNotFoundError`` for an attack whose
    module is not installed.

    >>> attack = make_attack("apgd-ce", eps=8 / 255, n_iter=50)
    >>> adv_images = attack(model, images, labels)
    """
    try:
        factory = ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
    return factory(eps, seed=seed, **kwargs)
