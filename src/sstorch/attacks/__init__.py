"""Adversarial attacks with one contract, ``attack(model, images, labels) -> adv_images``
(images in ``[0, 1]``, normalization inside the model), and the name registry.

One file per family: :mod:`~sstorch.attacks.pgd` (FGSM, PGD, PGD-L2, TRADES' KL adversary),
:mod:`~sstorch.attacks.apgd`, :mod:`~sstorch.attacks.fab`, :mod:`~sstorch.attacks.square`,
:mod:`~sstorch.attacks.autoattack`; :mod:`~sstorch.attacks.registry` maps names to them.
"""

from sstorch.attacks.apgd import APGD, APGDTargeted
from sstorch.attacks.autoattack import AutoAttack, AutoAttackResult
from sstorch.attacks.pgd import (
    FGSM,
    PGD,
    PGDL2,
    cw_margin_loss,
    kl_adversary,
    trades_adversary,
)
from sstorch.attacks.registry import ATTACKS, make_attack

__all__ = ["APGD", "ATTACKS", "FGSM", "PGD", "PGDL2", "APGDTargeted", "AutoAttack",
           "AutoAttackResult", "cw_margin_loss", "kl_adversary", "make_attack",
           "trades_adversary"]
