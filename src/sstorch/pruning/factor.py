r"""Magnitude pruning of Kronecker factors, with persistent masks.

A zero in ``U_k`` removes a whole block pattern of ``W = U_1 ⊗ … ⊗ U_K``
(``nnz(A ⊗ B) = nnz(A) nnz(B)``), so pruning the small factors prunes the big matrix. Pruning is
a schedule of calls with rising targets::

    prune_factors(model, 0.5)   # masks persist in state_dict
    keep_pruned_zero(optimizer, model)   # and survive this optimizer's steps

The masks are the layers' ``mask_k`` buffers and nothing else holds pruning state:
:func:`sstorch.pruning.masks.keep_pruned_zero` arms one optimizer (training arms its own) to
re-zero masked entries after each step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sstorch.layers.base import structured_layers
from sstorch.layers.separable import SeparableLinear

__all__ = ["apply_masks_", "prune_factors", "remove_masks_"]

_NO_LAYERS = "no SeparableLinear found in the model; use sstorch.separate first"
_SCOPES = ("factor", "slice")


def _layers_or_raise(model: nn.Module) -> list[tuple[str, SeparableLinear]]:
    layers = structured_layers(model, SeparableLinear)
    if not layers:
        raise ValueError(_NO_LAYERS)
    return layers


def _keep_mask(w: Tensor, old: Tensor | None, sparsity: float, scope: str) -> Tensor:
    """Boolean mask keeping the largest ``|w|`` of a ``(R, m, n)`` factor.

    ``floor(sparsity · size)`` entries are dropped per factor (``scope="factor"``) or per rank
    slice ``U_k[r]`` (``scope="slice"``), already-masked entries first; the largest entry of
    every slice is always kept, and nothing masked is ever revived.
    """
    score = w.abs().to(torch.float32)
    if old is not None:
        score = torch.where(old != 0, score, torch.full_like(score, -1.0))
    rank = w.shape[0]
    flat = score.reshape(rank, -1)
    # Protect each slice's largest entry so that no U_k[r] (hence no term of W) vanishes.
    flat.scatter_(1, flat.argmax(1, keepdim=True), math.inf)
    if scope == "slice":
        size = flat.shape[1]
        n_keep = max(size - math.floor(sparsity * size + 1e-9), 1)
        idx = flat.topk(n_keep, dim=1).indices
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    else:
        size = flat.numel()
        n_keep = max(size - math.floor(sparsity * size + 1e-9), rank)
        idx = flat.reshape(-1).topk(n_keep).indices
        keep = torch.zeros(size, dtype=torch.bool, device=w.device).scatter_(0, idx, True)
    keep = keep.reshape(w.shape)
    if old is not None:
        keep &= old != 0
    return keep


@torch.no_grad()
def prune_factors(
    model_or_layer: nn.Module, sparsity: float, scope: str = "factor"
) -> dict[str, float]:
    r"""Magnitude-prune every factor tensor to a target fraction of zeros, with persistent masks.

    For each factor ``U_k (R, m_k, n_k)`` the ``floor(sparsity · R m_k n_k)`` smallest-magnitude
    entries (``scope="factor"``) or the ``floor(sparsity · m_k n_k)`` smallest of each rank
    slice ``U_k[r]`` (``scope="slice"``) are masked. At least one entry per factor *and per
    rank slice* is always kept (the slice's largest), because an all-zero factor makes the whole
    Kronecker term, hence W for R = 1, vanish.

    Masks are buffers ``mask_k`` (same shape, dtype and device as factor k, so they are saved in
    ``state_dict``), the forward multiplies by them, and the parameters are set to exactly 0 at
    masked positions. Existing masks are respected: masked entries stay masked, so pruning is
    monotone and can follow a schedule of rising targets. An optimizer armed with
    :func:`sstorch.pruning.masks.keep_pruned_zero` re-zeroes masked parameters after every
    ``optimizer.step()``, so momentum, Adam moments and weight decay cannot revive them.

    Under ``DistributedDataParallel`` prune before wrapping, or on every rank alike (masks
    depend only on the parameters, which DDP keeps identical).

    Args:
        model_or_layer: a model containing :class:`SeparableLinear` layers, or one layer.
        sparsity: target fraction of zeros, ``0 ≤ sparsity < 1``.
        scope: ``"factor"`` or ``"slice"``.

    Returns:
        ``{layer name: fraction of masked factor entries}``.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    result = {}
    for name, layer in _layers_or_raise(model_or_layer):
        masked = total = 0
        for k, u in enumerate(layer.factors):
            old = getattr(layer, f"mask_{k}", None)
            mask = _keep_mask(u, old, float(sparsity), scope).to(u.dtype)
            if old is None:
                layer.register_buffer(f"mask_{k}", mask)
            else:
                old.copy_(mask)
            u.mul_(mask)
            masked += int((mask == 0).sum())
            total += mask.numel()
        result[name] = masked / total
    return result


@torch.no_grad()
def apply_masks_(model: nn.Module) -> int:
    """Set masked factor entries to exactly 0 (``U_k ← U_k ⊙ mask_k``).

    ``load_state_dict`` recreates the masks of a pruned checkpoint and zeroes the masked entries
    already; this is for factors changed by hand.

    Returns:
        number of layers that carry masks.
    """
    count = 0
    for _, layer in structured_layers(model, SeparableLinear):
        if layer.masks():
            layer.apply_masks_()
            count += 1
    return count


def remove_masks_(model: nn.Module) -> int:
    """Un-prune: delete the ``mask_k`` buffers (pruned entries stay 0 but may train again).

    Returns:
        number of layers whose masks were removed.
    """
    count = 0
    for _, layer in structured_layers(model, SeparableLinear):
        masks = layer.masks()
        for k, _ in masks:
            delattr(layer, f"mask_{k}")
        count += bool(masks)
    return count
