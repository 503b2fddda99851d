"""Sparse inference: pruned ``nn.Linear`` layers run through a CSR matrix product."""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator

from torch import Tensor, nn

from sstorch.pruning.magnitude import MASK, SCORE, linear_layers

__all__ = ["SPARSE_DENSITY", "sparse_inference"]

SPARSE_DENSITY = 0.1  # pruned Linear layers at most this dense run sparse (sparse_inference)


def _sparse_forward(self: nn.Linear, x: Tensor) -> Tensor:
    """``y = x Wᵀ + b`` with W held as a CSR matrix (``self._csr_weight``)."""
    flat = x.reshape(-1, x.shape[-1])
    y = (self._csr_weight @ flat.T).T
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def sparse_inference(model: nn.Module, max_density: float = SPARSE_DENSITY) -> Iterator[int]:
    """Run every pruned ``nn.Linear`` of ``model`` with at most ``max_density`` nonzero weights
    through a sparse (CSR) matrix product while the block lasts; yields how many layers.

    The layer computes the same ``y = x Wᵀ + b`` (the pruned weights are exactly 0), with
    gradients w.r.t. its input, as attacks need, but not w.r.t. W: for evaluation of frozen
    models only (the weights must not change inside the block). At 300× pruning of the
    784-1024-1024-10 MLP a forward–backward pass is ~10× cheaper on a CPU. Layers that are
    learning HYDRA scores, or have their own forward already, are left alone.
    """
    swapped: list[nn.Linear] = []
    try:
        for _, layer in linear_layers(model):
            mask = getattr(layer, MASK, None)
            if (mask is None or getattr(layer, SCORE, None) is not None
                    or "forward" in vars(layer)):
                continue
            weight = layer.weight.detach()
            if weight.count_nonzero().item() > max_density * weight.numel():
                continue
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                warnings.simplefilter("ignore")
                layer._csr_weight = weight.to_sparse_csr()
            layer.forward = types.MethodType(_sparse_forward, layer)
            swapped.append(layer)
        yield len(swapped)
    finally:
        for layer in swapped:
            del layer.forward
            del layer._csr_weight
