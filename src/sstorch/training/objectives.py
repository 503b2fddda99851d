r"""Training objectives: the loss of one batch, looked up by name in :data:`OBJECTIVES`.

Each objective maps ``(cfg, model, core, x, y, scale, teacher)`` to ``(loss, logits)``:

* ``pgd`` / ``fgsm`` (Madry et al.): :math:`\mathrm{CE}(f(x'), y)` with ``x'`` from PGD / FGSM
  in the L∞ ball of radius ε·scale;
* ``trades`` (Zhang et al.): :math:`\mathrm{CE}(f(x), y) + β · \mathrm{KL}(f(x) ‖ f(x'))`;
* ``none`` (also any attack with ε = 0): :math:`\mathrm{CE}(f(x), y)`;
* ``rslad`` / ``ard``: robust distillation from ``teacher``
  (:func:`sstorch.training.distill.distill_loss`), chosen by ``distill.method``.

The attack is crafted on ``core`` (the unwrapped model: no DDP gradient sync for input
gradients) in eval mode, so batch-norm statistics see only the training forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks import FGSM, PGD, trades_adversary
from sstorch.config import Config
from sstorch.training.distill import distill_loss

__all__ = ["OBJECTIVES", "Objective", "eps_scale", "objective_name", "register_objective",
           "training_loss"]


class Objective(Protocol):
    """``(cfg, model, core, x, y, scale, teacher) -> (loss, logits)``."""

    def __call__(self, cfg: Config, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor,
                 scale: float, teacher: nn.Module | None) -> tuple[Tensor, Tensor]: ...


OBJECTIVES: dict[str, Objective] = {}


def register_objective(*names: str) -> Callable[[Objective], Objective]:
    """Register the decorated objective under each of ``names`` in :data:`OBJECTIVES`."""

    def add(fn: Objective) -> Objective:
        for name in names:
            OBJECTIVES[name] = fn
        return fn

    return add


def eps_scale(cfg: Config, step: int, steps_per_epoch: int) -> float:
    r"""Fraction of ε used at training step ``step`` (0-based, counted over all epochs).

    .. math:: \min(1, (step + 1) / (E_w · S))

    with ``E_w = attack.eps_warmup_epochs`` and S steps per epoch; 1 when ``E_w = 0``.
    """
    warm = cfg.attack.eps_warmup_epochs * steps_per_epoch
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


def _cross_entropy_on(model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``CE(f(x'), y)`` with ``model`` back in train mode; the logits on ``x'``."""
    model.train()
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


@register_objective("none")
def _clean(cfg: Config, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor,
           scale: float, teacher: nn.Module | None) -> tuple[Tensor, Tensor]:
    """``CE(f(x), y)`` on the clean inputs."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@register_objective("pgd")
def _pgd(cfg: Config, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor,
         scale: float, teacher: nn.Module | None) -> tuple[Tensor, Tensor]:
    """PGD adversarial training: ``CE(f(x'), y)``, ``x'`` from ``attack.steps`` PGD steps."""
    a = cfg.attack
    core.eval()
    attack = PGD(a.eps * scale, a.step_size * scale, a.steps, random_start=a.random_start)
    return _cross_entropy_on(model, attack(core, x, y), y)


@register_objective("fgsm")
def _fgsm(cfg: Config, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor,
          scale: float, teacher: nn.Module | None) -> tuple[Tensor, Tensor]:
    """Fast adversarial training: ``CE(f(x'), y)``, ``x'`` from one FGSM step."""
    a = cfg.attack
    core.eval()
    attack = FGSM(a.eps * scale, step_size=a.step_size * scale, random_start=a.random_start)
    return _cross_entropy_on(model, attack(core, x, y), y)


@register_objective("trades")
def _trades(cfg: Config, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor,
            scale: float, teacher: nn.Module | None) -> tuple[Tensor, Tensor]:
    """TRADES: ``CE(f(x), y) + β · KL(f(x) ‖ f(x'))``; the logits on ``x'``."""
    a = cfg.attack
    core.eval()
    x_adv = trades_adversary(core, x, a.eps * scale, a.step_size * scale, a.steps)
    model.train()
    logits_clean = model(x)
    logits_adv = model(x_adv)
    robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1),
                      reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + a.trades_beta * robust, logits_adv


@register_objective("rslad", "ard")
def _distill(cfg: Config, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor,
             scale: float, teacher: nn.Module | None) -> tuple[Tensor, Tensor]:
    """Robust distillation from ``teacher`` (``distill.method``: RSLAD or ARD)."""
    if teacher is None:
        raise ValueError(f"the {cfg.distill.method} objective needs a teacher (distill.teacher)")
    a = cfg.attack
    return distill_loss(model, teacher, x, y, cfg.distill, a.eps * scale,
                        a.step_size * scale, a.steps, core)


def objective_name(cfg: Config, teacher: nn.Module | None) -> str:
    """The :data:`OBJECTIVES` key of a run: ``distill.method`` with a teacher, ``none`` when
    ``attack.name`` is none or ε = 0, else ``attack.name``."""
    if teacher is not None:
        return cfg.distill.method
    a = cfg.attack
    return "none" if a.name == "none" or a.eps == 0 else a.name


def training_loss(cfg: Config, model: nn.Module, x: Tensor, y: Tensor,
                  core: nn.Module | None = None, scale: float = 1.0,
                  teacher: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """The training loss and the logits on the adversarial (or clean) inputs.

    ``scale`` multiplies ε and the step size (the ε warm-up, :func:`eps_scale`); ``core`` is
    the unwrapped model (``model`` itself when None).
    """
    core = core if core is not None else model
    return OBJECTIVES[objective_name(cfg, teacher)](cfg, model, core, x, y, scale, teacher)
