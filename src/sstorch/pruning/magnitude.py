r"""Unstructured magnitude pruning of ``nn.Linear`` weights, with persistent masks.

:func:`prune_linear_`: unstructured magnitude pruning of ``nn.Linear`` weights (Han et al.
2015, "Learning both Weights and Connections for Efficient Neural Networks") with persistent
masks, ramped over epochs by :func:`keep_schedule` and fine-tuned with the same adversarial
training, as in the pruning baselines of Sehwag et al. 2020 ("HYDRA: Pruning Adversarially
Robust Neural Networks"); :class:`Hydra` is that paper's method: the mask is learned from the
adversarial loss through importance scores, then the kept weights are fine-tuned.

Masks of pruned Linear layers are ``weight_mask`` buffers (so they are in ``state_dict`` and in
checkpoints); the masked weights are set to exactly 0 and kept there after every optimizer step
by the global post-step hook of :mod:`sstorch.layers.separable`, so momentum and weight decay cannot
revive them. :func:`sync_linear_masks_` recreates the buffers when a pruned checkpoint is loaded
into a freshly built model (``ImageClassifier`` calls it).
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.layers.separable import track_masked, untrack_masked

__all__ = [
    "MASK",
    "SCORE",
    "apply_linear_masks_",
    "keep_schedule",
    "linear_layers",
    "prune_linear_",
    "remove_linear_masks_",
    "sync_linear_masks_",
]

MASK = "weight_mask"
SCORE = "weight_score"  # HYDRA importance scores (sstorch.pruning.hydra)


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` (the layers that dense pruning acts on)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _rezero(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.mul_(getattr(layer, MASK))


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
    ``weight_mask`` buffers, the masked weights are set to 0, and the global optimizer post-step
    hook keeps them 0.

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
        track_masked(layer, _rezero)
        result[name] = int(mask.sum())
    return result


@torch.no_grad()
def apply_linear_masks_(model: nn.Module) -> int:
    """Zero the masked weights of every pruned ``nn.Linear`` and (re-)arm the post-step hook.

    Returns:
        number of pruned Linear layers.
    """
    count = 0
    for _, layer in linear_layers(model):
        if getattr(layer, SCORE, None) is not None:  # HYDRA score learning: W stays dense
            _score_mode(layer, True)
        elif getattr(layer, MASK, None) is not None:
            _score_mode(layer, False)
            _rezero(layer)
            track_masked(layer, _rezero)
            count += 1
    return count


def remove_linear_masks_(model: nn.Module) -> int:
    """Un-prune: delete the ``weight_mask`` buffers (the zeros stay but may train again)."""
    count = 0
    for _, layer in linear_layers(model):
        if getattr(layer, MASK, None) is not None:
            delattr(layer, MASK)
            untrack_masked(layer)
            count += 1
    return count


def sync_linear_masks_(model: nn.Module, state_dict: Mapping[str, Any], prefix: str = "") -> int:
    """Before loading ``state_dict``: give every ``nn.Linear`` the mask buffer the state has.

    The checkpoint decides which layers are pruned: a Linear gets a (placeholder) ``weight_mask``
    when the state has ``<name>.weight_mask`` and loses its own when the state has none. Call
    :func:`apply_linear_masks_` after loading (``ImageClassifier`` does both).

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
                untrack_masked(layer)
                _score_mode(layer, False)
        count += f"{prefix}{name}.{MASK}" in state_dict
    return count


def _scored_forward(layer: nn.Linear, x: Tensor) -> Tensor:
    """``x (W ⊙ m)ᵀ + b`` with the straight-through mask ``m + s − s.detach()`` (value m)."""
    s = getattr(layer, SCORE)
    return F.linear(x, layer.weight * (getattr(layer, MASK) + s - s.detach()), layer.bias)


def _score_mode(layer: nn.Module, on: bool) -> None:
    """Route ``layer``'s forward through :func:`_scored_forward` (an instance attribute, so the
    state_dict and the class are untouched) or back to ``nn.Linear.forward``."""
    if on:
        layer.forward = types.MethodType(_scored_forward, layer)
    elif "forward" in vars(layer):
        del layer.forward
