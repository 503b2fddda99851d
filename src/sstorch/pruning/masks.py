r"""Keeping pruned entries at exactly 0 through optimizer steps, per optimizer.

A pruned tensor ``θ`` with mask ``m ∈ {0, 1}`` must satisfy ``θ ⊙ (1 − m) = 0`` after every
update. Its gradient alone would respect that (for factors the forward uses ``U ⊙ m``), but
momentum, Adam moments and (decoupled) weight decay move masked entries anyway, so after each
step the masked entries are set back to 0: ``θ ← θ ⊙ m``.

Nothing here is global. Which layers are pruned is read off the model at every step (a layer
is pruned when it carries its mask buffers, see :func:`zero_pruned_`), and only optimizers
whose owner asks for it re-zero: :func:`keep_pruned_zero` registers a post-step hook on *that*
optimizer (``optimizer.register_step_post_hook``) for *that* model. Training
(:func:`sstorch.training.optim._optimizer`) does so for the model's optimizer; code that steps
its own optimizer over a pruned model calls it too (or :func:`zero_pruned_` after each step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.magnitude import MASK, SCORE

__all__ = ["keep_pruned_zero", "zero_pruned_"]


@torch.no_grad()
def zero_pruned_(model: nn.Module) -> int:
    r"""``θ ← θ ⊙ m`` for every pruned tensor of ``model``; returns the number of pruned layers.

    Pruned layers: :class:`SeparableLinear` with ``mask_k`` buffers (factor ``k``), and
    ``nn.Linear`` with a ``weight_mask`` buffer, except while HYDRA learns its scores (a
    ``weight_score`` buffer: the dense weights must survive the score phase).
    """
    count = 0
    for layer in model.modules():
        if isinstance(layer, SeparableLinear):
            if layer.masks():
                layer.apply_masks_()
                count += 1
        elif (isinstance(layer, nn.Linear) and getattr(layer, MASK, None) is not None
              and getattr(layer, SCORE, None) is None):
            layer.weight.mul_(getattr(layer, MASK))
            count += 1
    return count


def keep_pruned_zero(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """After every ``optimizer.step()``, :func:`zero_pruned_` the layers of ``model``.

    The hook belongs to ``optimizer`` alone (other optimizers are untouched) and follows the
    model's current masks, so layers pruned, loaded or un-pruned later are covered. Returns the
    handle; ``handle.remove()`` detaches it.
    """

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        zero_pruned_(model)

    return optimizer.register_step_post_hook(hook)
