"""The optimizer and the learning-rate schedule of training."""

from __future__ import annotations

import math

import torch
from torch import nn

from sstorch.config import Config
from sstorch.pruning.masks import keep_pruned_zero


def _lr_lambda(cfg: Config, total_steps: int):
    o = cfg.optim
    milestones = [int(m * total_steps) if m < 1 else int(m) for m in o.milestones]

    def fn(step: int) -> float:
        t = step / max(total_steps, 1)
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if o.schedule == "multistep":
            return o.gamma ** sum(step >= m for m in milestones)
        if o.schedule == "onecycle":  # linear up to the peak at 30%, linear down to 0
            return t / 0.3 if t < 0.3 else max(0.0, (1 - t) / 0.7)
        return 1.0

    return fn


def _optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over ``model``'s parameters, armed to keep pruned entries at 0
    (``θ ← θ ⊙ m`` after each step, :func:`sstorch.pruning.masks.keep_pruned_zero`)."""
    o = cfg.optim
    opt: torch.optim.Optimizer
    if o.name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                              weight_decay=o.weight_decay, nesterov=o.momentum > 0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    keep_pruned_zero(opt, model)
    return opt
