r"""HYDRA (Sehwag et al. 2020, "HYDRA: Pruning Adversarially Robust Neural Networks"): the
pruning mask is learned from the adversarial loss through importance scores, then the kept
weights are fine-tuned.

While the scores learn, every ``nn.Linear`` of the model is a
:class:`~sstorch.pruning.magnitude.ScoredLinear` (put in its place, sharing its parameters and
buffers, so the state-dict keys stay ``<layer>.weight``, ``.weight_mask``, ``.weight_score``);
:meth:`Hydra.finalize` puts plain ``nn.Linear`` layers back.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sstorch.pruning.magnitude import MASK, SCORE, _rezero, _score_mode, _top_k, linear_layers

__all__ = ["Hydra"]


class Hydra:
    r"""HYDRA score learning (Sehwag et al. 2020, "HYDRA: Pruning Adversarially Robust Neural
    Networks"): choose the weights to keep by minimising the adversarial loss itself.

    Every ``nn.Linear`` gets an importance score ``s`` per weight (a ``weight_score`` buffer,
    initialised to ``|w|``, so the first mask is the global magnitude mask) and computes
    ``y = x (W ⊙ m)ᵀ + b`` with ``m`` the ``keep`` largest ``|s|`` over all layers together (each
    layer's largest always kept, as in :func:`prune_linear_`). The mask is a step function, so the
    straight-through estimator passes ``∂L/∂m`` to ``s``: ``∂L/∂s = W ⊙ ∂L/∂(W ⊙ m)``. While the
    scores learn, the weights and biases are frozen (the paper's pruning phase); the scores have
    their own SGD (:attr:`optimizer`: the run's momentum and weight decay, its lr set per step),
    and the mask is recomputed after each step. :meth:`finalize` fixes the mask, zeroes the
    pruned weights, drops the scores and unfreezes the model for adversarial fine-tuning.

    The model state carries the scores while they learn, so a run resumes in the middle of the
    score phase (the scores' momentum restarts).
    """

    def __init__(self, model: nn.Module, keep: int, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        self.model, self.keep = model, int(keep)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.optimizer: torch.optim.Optimizer | None = None
        if self.active:  # resumed in the middle of the score phase
            self._start()

    @property
    def layers(self) -> list[nn.Linear]:
        return [layer for _, layer in linear_layers(self.model)]

    @property
    def active(self) -> bool:
        """True while the scores learn (between :meth:`attach` and :meth:`finalize`)."""
        return any(getattr(layer, SCORE, None) is not None for layer in self.layers)

    @torch.no_grad()
    def attach(self) -> None:
        """Start the score phase: scores ``|w|`` (of the current, possibly pruned, weights)."""
        for layer in self.layers:
            w = layer.weight
            score = w.detach().abs().clone()
            if getattr(layer, MASK, None) is not None:
                score.mul_(getattr(layer, MASK))
            for buf, value in ((SCORE, score), (MASK, torch.ones_like(w))):
                if getattr(layer, buf, None) is None:
                    layer.register_buffer(buf, value)
                else:
                    getattr(layer, buf).copy_(value)
            _score_mode(self.model, layer, True)  # the dense weights survive the score phase
        self._start()
        self.update_masks()

    def _start(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        scores = [getattr(layer, SCORE).requires_grad_(True) for layer in self.layers]
        self.optimizer = torch.optim.SGD(scores, lr=0.0, momentum=self.momentum,
                                         weight_decay=self.weight_decay)

    @torch.no_grad()
    def update_masks(self) -> None:
        """``m`` = the ``keep`` largest ``|s|`` over all layers (each layer's largest kept)."""
        scores = []
        for layer in self.layers:
            s = getattr(layer, SCORE).detach().abs().float().flatten()
            s[s.argmax()] = math.inf
            scores.append(s)
        for layer, chosen in zip(self.layers, _top_k(scores, self.keep), strict=True):
            getattr(layer, MASK).copy_(chosen.reshape(layer.weight.shape))

    @torch.no_grad()
    def finalize(self) -> dict[str, int]:
        """End the score phase: keep the current mask, zero the pruned weights, drop the scores,
        unfreeze every parameter. Returns ``{layer name: weights kept}``."""
        self.update_masks()
        kept = {}
        for name, layer in linear_layers(self.model):
            delattr(layer, SCORE)
            layer = _score_mode(self.model, layer, False)
            _rezero(layer)
            kept[name] = int(getattr(layer, MASK).sum())
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.optimizer = None
        return kept
