"""Robust distillation: a (small, separable) student learns a trained teacher's function on
adversarial inputs.

Pruning inherits the dense model's weights; a separable student can inherit its *function*.
Two objectives from the literature, both with the teacher's soft labels ``T(x)`` on the clean
input and an inner maximisation over the L∞ ε-box:

* **RSLAD** (Zi et al., "Revisiting Adversarial Robustness Distillation", ICCV 2021)::

      x' = argmax_{‖x' − x‖∞ ≤ ε} KL(T(x) ‖ S(x'))
      L  = α · KL(T(x) ‖ S(x')) + (1 − α) · KL(T(x) ‖ S(x))          (paper: α = 5/6)

* **ARD** (Goldblum et al., "Adversarially Robust Distillation", AAAI 2020)::

      x' = argmax_{‖x' − x‖∞ ≤ ε} CE(S(x'), y)
      L  = α · τ² · KL(T(x)/τ ‖ S(x')/τ) + (1 − α) · CE(S(x), y)

``KL`` is averaged over the batch. The teacher is frozen and in eval mode; it takes the same
``[0, 1]`` images as the student (both normalize inside). Configure with the ``distill`` section
(:class:`sstorch.config.DistillConfig`): ``distill.teacher: RUN_DIR``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks import PGD, kl_adversary
from sstorch.config import ConfigError, DistillConfig

__all__ = ["distill_loss", "load_teacher"]


def load_teacher(target: str | Path, device: torch.device, num_classes: int,
                 image_shape: tuple[int, ...]) -> nn.Module:
    """The frozen teacher model of a run directory (its best checkpoint) or checkpoint file.

    Raises :class:`ConfigError` naming ``distill.teacher`` when the path holds no trained run or
    its model does not classify the student's images into the student's classes.
    """
    from sstorch.eval.run import load_run
    from sstorch.io.checkpoint import CheckpointError

    try:
        _, teacher, ckpt, _ = load_run(target, device)
    except (FileNotFoundError, CheckpointError) as exc:
        raise ConfigError(f"distill.teacher={str(target)!r}: {exc}") from exc
    if tuple(getattr(teacher, "image_shape", image_shape)) != tuple(image_shape):
        raise ConfigError(f"distill.teacher={str(target)!r} takes images "
                          f"{tuple(teacher.image_shape)}, the student {tuple(image_shape)}: "
                          "train the teacher on the student's dataset")
    with torch.no_grad():
        out = teacher(torch.zeros(1, *image_shape, device=device))
    if out.shape[-1] != num_classes:
        raise ConfigError(f"distill.teacher={str(target)!r} ({ckpt}) has {out.shape[-1]} "
                          f"classes, the student {num_classes}")
    teacher.eval().requires_grad_(False)
    return teacher


def _kl(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """``KL(p_T ‖ softmax(z_S))`` averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), teacher_probs, reduction="batchmean")


def distill_loss(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor,
                 cfg: DistillConfig, eps: float, step_size: float, steps: int,
                 core: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """The distillation loss and the student's logits on the adversarial inputs.

    ``core`` is the unwrapped student (no DDP gradient sync while crafting ``x'``); the
    adversary runs with the student in eval mode and the loss in train mode, as in
    :func:`sstorch.training.objectives.training_loss`.
    """
    core = core if core is not None else student
    with torch.no_grad():
        t_logits = teacher(x).float()
    tau = cfg.temperature
    core.eval()
    if eps == 0:
        x_adv = x.detach()
    elif cfg.method == "rslad":
        x_adv = kl_adversary(core, x, F.softmax(t_logits, dim=1), eps, step_size, steps)
    else:
        x_adv = PGD(eps, step_size, steps, random_start=True)(core, x, y)
    student.train()
    logits_adv = student(x_adv)
    if cfg.method == "rslad":
        p_t = F.softmax(t_logits, dim=1)
        loss = cfg.alpha * _kl(logits_adv, p_t)
        if cfg.alpha < 1:
            loss = loss + (1 - cfg.alpha) * _kl(student(x), p_t)
    else:
        loss = cfg.alpha * tau**2 * _kl(logits_adv / tau, F.softmax(t_logits / tau, dim=1))
        if cfg.alpha < 1:
            loss = loss + (1 - cfg.alpha) * F.cross_entropy(student(x), y)
    return loss, logits_adv
