r"""Unstructured magnitude pruning of ``nn.Linear`` weights, with persistent masks.

:func:`prune_linear_`: unstructured magnitude pruning of ``nn.Linear`` weights (Han et al.
2015, "Learning both Weights and Connections for Efficient Neural Networks") with persistent
masks, ramped over epochs by :func:`keep_schedule` and fine-tuned with the same adversarial
training, as in the pruning baselines of Sehwag et al. 2020 ("HYDRA: Pruning Adversarially
Robust Neural Networks"); :class:`~sstorch.pruning.hydra.Hydra` is that paper's method: the
mask is learned from the adversarial loss through importance scores, then the kept weights are
fine-tuned.

State lives in the model only, in the layers' own state-dict keys:

* a pruned Linear carries a ``weight_mask`` buffer ``m`` (so masks are in ``state_dict`` and in
  checkpoints, under ``<layer>.weight_mask``) and its masked weights are exactly 0; the layer is
  still a plain ``nn.Linear`` computing ``x Wᵀ + b``. The optimizer that trains it keeps the
  zeros (``W ← W ⊙ m`` after each step, :func:`sstorch.pruning.masks.keep_pruned_zero`), so
  momentum and weight decay cannot revive them.
* while HYDRA learns its scores the layer also carries a ``weight_score`` buffer ``s`` and is a
  :class:`ScoredLinear`, an ``nn.Linear`` whose forward is ``x (W ⊙ (m + s − sg(s)))ᵀ + b``
  (``sg``: stop-gradient). It is put in the Linear's place in its parent module, sharing the
  Linear's parameters and buffers, so optimizers and state-dict keys do not notice
  (:func:`apply_linear_masks_` picks the class from the buffers after loading).

:func:`sync_linear_masks_` recreates the buffers when a pruned checkpoint is loaded into a
freshly built model (``ImageClassifier`` calls it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MASK",
    "SCORE",
    "ScoredLinear",
    "apply_linear_masks_",
    "keep_schedule",
    "linear_layers",
    "prune_linear_",
    "relinear",
    "remove_linear_masks_",
    "replace_module",
    "sync_linear_masks_",
]

MASK = "weight_mask"
SCORE = "weight_score"  # HYDRA importance scores (sstorch.pruning.hydra)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` (the layers that dense pruning acts on)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _rezero(layer: nn.Module) -> None:
    """``W ← W ⊙ m``."""
    with torch.no_grad():
        layer.weight.mul_(getattr(layer, MASK))


class ScoredLinear(nn.Linear):
    r"""``nn.Linear`` in HYDRA's score phase: ``y = x (W ⊙ (m + s − sg(s)))ᵀ + b``.

    The value is ``x (W ⊙ m)ᵀ + b``; the straight-through term passes ``∂L/∂m`` to the scores,
    ``∂L/∂s = W ⊙ ∂L/∂(W ⊙ m)``. Built by :func:`relinear` from a Linear carrying
    ``weight_mask`` and ``weight_score`` buffers.
    """

    def forward(self, x: Tensor) -> Tensor:
        s = getattr(self, SCORE)
        return F.linear(x, self.weight * (getattr(self, MASK) + s - s.detach()), self.bias)


_L = TypeVar("_L", bound=nn.Linear)


def relinear(layer: nn.Linear, cls: type[_L]) -> _L:
    """A ``cls`` (an ``nn.Linear`` class) holding ``layer``'s very parameters and buffers.

    Nothing is copied or initialised (no random numbers drawn), so optimizers holding the
    parameters and the state-dict keys are unaffected. Hooks registered on ``layer`` are not
    carried over.
    """
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.in_features, new.out_features = layer.in_features, layer.out_features
    new.register_parameter("weight", layer.weight)
    new.register_parameter("bias", layer.bias)
    for name, buf in layer.named_buffers(recurse=False):
        new.register_buffer(name, buf, persistent=name not in layer._non_persistent_buffers_set)
    new.train(layer.training)
    return new


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child in ``model`` (same names, same state-dict keys).

    Raises:
        ValueError: ``old`` is ``model`` itself (it has no parent to put ``new`` in).
    """
    if old is model:
        raise ValueError(f"cannot replace the model itself ({type(old).__name__}); wrap the "
                         "layer in a container, e.g. nn.Sequential(layer)")
    for parent in model.modules():
        for key, child in list(parent.named_children()):
            if child is old:
                setattr(parent, key, new)


def keep_schedule(total: int, final: int, frac: float) -> int:
    r"""Weights kept at fraction ``frac ∈ [0, 1]`` of the pruning ramp: ``N^{1-f} K^f``.

    A geometric ramp from all ``N`` weights to the final ``K``: every step removes the same
    fraction of the weights still there (a linear ramp in sparsity would remove 99 % of the
    survivors in its last step at 300× compression).
    """
    if not 1 <= final <= total:
        raise ValueError(f"need 1 ≤ final ≤ total, got final={final}, total={total}")
    f = min(max(float(frac), 0.0), 1.0)
    return max(final, min(total, round(math.exp((1 - f) * math.log(total)
                                                   + f * math.log(final)))))


def _allocate(sizes: list[int], keep: int) -> list[int]:
    """Split ``keep`` over layers in proportion to their sizes (largest remainder, ≥ 1 each)."""
    total = sum(sizes)
    quota = [keep * s / total for s in sizes]
    out = [max(1, math.floor(q)) for q in quota]
    order = sorted(range(len(sizes)), key=lambda i: quota[i] - math.floor(quota[i]),
                   reverse=True)
    i = 0
    while sum(out) < keep:
        j = order[i % len(order)]
        if out[j] < sizes[j]:
            out[j] += 1
        i += 1
    while sum(out) > keep:  # only when the ≥ 1 floor overshoots
        j = max(range(len(out)), key=lambda k: out[k])
        out[j] -= 1
    return out


def _top_k(scores: list[Tensor], keep: int, scope: str = "global") -> list[Tensor]:
    """Boolean masks (flat, one per layer) of the ``keep`` largest scores, over all layers
    together (``global``) or the same fraction per layer (``layer``)."""
    sizes = [s.numel() for s in scores]
    if scope == "global":
        flat = torch.cat(scores)
        chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        chosen[flat.topk(keep).indices] = True
        return list(chosen.split(sizes))
    keeps = []
    for s, k in zip(scores, _allocate(sizes, keep), strict=True):
        chosen = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
        chosen[s.topk(k).indices] = True
        keeps.append(chosen)
    return keeps


@torch.no_grad()
def prune_linear_(model: nn.Module, keep: int | None = None, sparsity: float | None = None,
                  scope: str = "global") -> dict[str, int]:
    r"""Magnitude-prune the weights of every ``nn.Linear`` to ``keep`` nonzeros in total.

    Give either ``keep`` (weights kept, all layers together) or ``sparsity`` (fraction of
    zeros, ``keep = N − ⌊sparsity · N⌋`` of the ``N`` Linear weights). Biases are not pruned.

    * ``scope="global"``: keep the ``keep`` largest ``|w|`` over all layers together, so layers
      whose weights matter more keep more of them;
    * ``scope="layer"``: every layer keeps the same fraction (``keep`` split in proportion to the
      layers' sizes, largest remainder).

    Each layer's largest weight is always kept (an all-zero layer disconnects the network), and
    masked weights are never revived, so a schedule of falling ``keep`` is monotone; the result
    has exactly ``keep`` unmasked weights unless fewer were left unmasked before. The masks are
    ``weight_mask`` buffers and the masked weights are set to 0; an optimizer armed with
    :func:`sstorch.pruning.masks.keep_pruned_zero` keeps them 0.

    Returns:
        ``{layer name: unmasked weights}``.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = linear_layers(model)
    if not layers:
        raise ValueError("no nn.Linear in the model: nothing to prune")
    sizes = [layer.weight.numel() for _, layer in layers]
    total = sum(sizes)
    if (keep is None) == (sparsity is None):
        raise ValueError("give exactly one of keep and sparsity")
    if sparsity is not None:
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        keep = total - math.floor(sparsity * total + 1e-9)
    assert keep is not None
    if isinstance(keep, bool) or not isinstance(keep, int) or not len(layers) <= keep <= total:
        raise ValueError(f"keep must be an int in [{len(layers)}, {total}] (one weight per "
                         f"layer at least, all {total} at most), got {keep!r}")
    scores = []
    for _, layer in layers:
        s = layer.weight.detach().abs().float().flatten()
        old = getattr(layer, MASK, None)
        if old is not None:
            s = torch.where(old.flatten() != 0, s, torch.full_like(s, -1.0))
        s[s.argmax()] = math.inf  # every layer keeps its largest weight
        scores.append(s)
    keeps = _top_k(scores, keep, scope)
    result = {}
    for (name, layer), chosen in zip(layers, keeps, strict=True):
        w = layer.weight
        old = getattr(layer, MASK, None)
        mask = chosen.reshape(w.shape)
        if old is not None:
            mask &= old != 0
            old.copy_(mask)
        else:
            layer.register_buffer(MASK, mask.to(w.dtype))
        _rezero(layer)
        result[name] = int(mask.sum())
    return result


@torch.no_grad()
def apply_linear_masks_(model: nn.Module) -> int:
    """Zero the masked weights of every pruned ``nn.Linear`` and give each Linear the class its
    buffers call for: :class:`ScoredLinear` with a ``weight_score`` (HYDRA's score phase, the
    weights stay dense), a plain ``nn.Linear`` otherwise.

    Returns:
        number of pruned Linear layers (score phase excluded).
    """
    count = 0
    for _, layer in linear_layers(model):
        if getattr(layer, SCORE, None) is not None:  # HYDRA score learning: W stays dense
            _score_mode(model, layer, True)
            continue
        _score_mode(model, layer, False)
        if getattr(layer, MASK, None) is not None:
            _rezero(layer)
            count += 1
    return count


def remove_linear_masks_(model: nn.Module) -> int:
    """Un-prune: delete the ``weight_mask`` buffers (the zeros stay but may train again)."""
    count = 0
    for _, layer in linear_layers(model):
        if getattr(layer, MASK, None) is not None:
            delattr(layer, MASK)
            count += 1
    return count


def sync_linear_masks_(model: nn.Module, state_dict: Mapping[str, Any], prefix: str = "") -> int:
    """Before loading ``state_dict``: give every ``nn.Linear`` the mask buffer the state has.

    The checkpoint decides which layers are pruned: a Linear gets a (placeholder) ``weight_mask``
    when the state has ``<name>.weight_mask`` and loses its own when the state has none (the same
    for HYDRA's ``weight_score``). Call :func:`apply_linear_masks_` after loading
    (``ImageClassifier`` does both).

    Returns:
        number of Linear layers that will be pruned after loading.
    """
    count = 0
    for name, layer in linear_layers(model):
        for buf in (MASK, SCORE):  # SCORE: a checkpoint taken while HYDRA learns its scores
            key = f"{prefix}{name}.{buf}" if name else f"{prefix}{buf}"
            has = getattr(layer, buf, None) is not None
            if key in state_dict and not has:
                layer.register_buffer(buf, torch.ones_like(layer.weight))
            elif key not in state_dict and has:
                delattr(layer, buf)
                if isinstance(layer, ScoredLinear):
                    layer = _score_mode(model, layer, False)
        count += f"{prefix}{name}.{MASK}" in state_dict
    return count


def _score_mode(model: nn.Module, layer: nn.Linear, on: bool) -> nn.Linear:
    """Put a :class:`ScoredLinear` (``on``) or a plain ``nn.Linear`` sharing ``layer``'s
    parameters and buffers in ``layer``'s place in ``model``; returns the layer now there."""
    if isinstance(layer, ScoredLinear) == on:
        return layer
    new = relinear(layer, ScoredLinear if on else nn.Linear)
    replace_module(model, layer, new)
    return new
