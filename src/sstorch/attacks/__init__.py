"""Adversarial attacks with one contract, ``attack(model, images, labels) -> adv_images``
(images in ``[0, 1]``, normalization inside the model), and the name registry.

:mod:`~sstorch.attacks.base` holds the :class:`Attack` base and the argument checks,
:mod:`~sstorch.attacks.losses` the objectives; one file per family: :mod:`~sstorch.attacks.fgsm`,
:mod:`~sstorch.attacks.pgd` (PGD, PGD-L2), :mod:`~sstorch.attacks.trades` (the KL adversaries),
:mod:`~sstorch.attacks.apgd`, :mod:`~sstorch.attacks.fab`, :mod:`~sstorch.attacks.square`,
:mod:`~sstorch.attacks.autoattack`; :mod:`~sstorch.attacks.registry` maps names to them.
"""

# isort: off
# The import order is the registration order, which ``--attacks`` lists: keep it.
from sstorch.attacks.base import Attack
from sstorch.attacks.fgsm import FGSM
from sstorch.attacks.pgd import PGD, PGDL2
from sstorch.attacks.trades import kl_adversary, trades_adversary
from sstorch.attacks.apgd import APGD, APGDTargeted
from sstorch.attacks.fab import FABTargeted
from sstorch.attacks.square import Square
from sstorch.attacks.autoattack import AutoAttack, AutoAttackResult
from sstorch.attacks.losses import cw_margin_loss
from sstorch.attacks.registry import ATTACKS, make_attack, register_attack
# isort: on

__all__ = ["APGD", "ATTACKS", "FGSM", "PGD", "PGDL2", "APGDTargeted", "Attack", "AutoAttack",
           "AutoAttackResult", "FABTargeted", "Square", "cw_margin_loss", "kl_adversary",
           "make_attack", "register_attack", "trades_adversary"]
