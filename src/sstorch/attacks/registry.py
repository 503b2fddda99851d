"""One entry point for every attack: ``make_attack(name, eps, seed=0, **kwargs)``.

================  ===========================================================================
name              attack (defaults)
================  ===========================================================================
``fgsm``          :class:`~sstorch.attacks.fgsm.FGSM`, one signed-gradient step of size ε
``pgd``           :class:`~sstorch.attacks.pgd.PGD`, CE loss, 50 steps of 2.5ε/50, 1 restart
``cw``            :class:`~sstorch.attacks.pgd.PGD` on the CW margin, 50 steps of 2.5ε/50
``pgd-l2``        :class:`~sstorch.attacks.pgd.PGDL2`, CE loss, 50 steps of 2.5ε/50 (ε an L2 radius)
``apgd-ce``       :class:`~sstorch.attacks.apgd.APGD`, CE loss, 100 iterations
``apgd-t``        :class:`~sstorch.attacks.apgd.APGDTargeted`, DLR-T loss, 9 targets, 100 iterations
``fab-t``         :class:`~sstorch.attacks.fab.FABTargeted`, 9 targets, 100 iterations
``square``        :class:`~sstorch.attacks.square.Square`, 5000 queries
``autoattack``    :class:`~sstorch.attacks.autoattack.AutoAttack`, the standard version
================  ===========================================================================

Every attack has the contract ``attack(model, images, labels) -> adv_images`` (L∞ unless
``norm=`` says otherwise) and is deterministic under ``seed``: each draws from its own
``torch.Generator(seed)``, so the caller's global RNG is left as it was. Keyword arguments go to
the attack's constructor (``make_attack("pgd", 8 / 255, steps=20, restarts=5)``).

Each attack's module registers its factory with :func:`register_attack`; importing
:mod:`sstorch.attacks` imports them all, in the order of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sstorch.attacks.base import Attack

__all__ = ["ATTACKS", "make_attack", "register_attack"]

#: name → factory ``(eps, seed=0, **kwargs) -> Attack``, in registration order.
ATTACKS: dict[str, Callable[..., Attack]] = {}

F = TypeVar("F", bound=Callable[..., Attack])


def register_attack(name: str) -> Callable[[F], F]:
    """Decorator: register an attack class or factory ``(eps, seed=0, **kwargs)`` as ``name``.

    >>> @register_attack("fgsm")
    ... class FGSM(Attack): ...
    """
    def register(factory: F) -> F:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        ATTACKS[name] = factory
        return factory
    return register


def make_attack(name: str, eps: float, seed: int | None = 0, **kwargs: Any) -> Attack:
    """The attack registered as ``name`` (see the module docstring), with radius ``eps``.

    Raises ``ValueError`` for an unknown name.

    >>> attack = make_attack("apgd-ce", eps=8 / 255, n_iter=50)
    >>> adv_images = attack(model, images, labels)
    """
    try:
        factory = ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}") from None
    return factory(eps, seed=seed, **kwargs)
