r"""Sparse inference: pruned ``nn.Linear`` layers run through a CSR matrix product.

Inside :func:`sparse_inference` each sparse enough pruned Linear is replaced, in its parent
module, by a :class:`SparseLinear`: an ``nn.Linear`` sharing the layer's parameters and buffers
(so ``weight``, ``bias`` and the state-dict keys are unchanged) whose forward computes
``y = x Wᵀ + b`` with ``W`` held as a CSR matrix. The original layers are put back when the
block ends.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from torch import Tensor, nn

from sstorch.pruning.magnitude import (
    MASK,
    SCORE,
    ScoredLinear,
    linear_layers,
    relinear,
    replace_module,
)

__all__ = ["SPARSE_DENSITY", "SparseLinear", "sparse_inference"]

SPARSE_DENSITY = 0.1  # pruned Linear layers at most this dense run sparse (sparse_inference)


class SparseLinear(nn.Linear):
    """``y = x Wᵀ + b`` with ``W`` as the CSR matrix :attr:`csr_weight` (a frozen copy of
    ``weight``, not in the state dict); gradients flow to ``x`` and ``b``, not to ``W``."""

    csr_weight: Tensor

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = (self.csr_weight @ flat.T).T
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
    learning HYDRA scores, run sparse already, or are ``model`` itself are left alone.
    """
    swapped: list[tuple[nn.Linear, SparseLinear]] = []
    try:
        for _, layer in linear_layers(model):
            mask = getattr(layer, MASK, None)
            if (mask is None or getattr(layer, SCORE, None) is not None or layer is model
                    or isinstance(layer, (SparseLinear, ScoredLinear))):
                continue
            weight = layer.weight.detach()
            if weight.count_nonzero().item() > max_density * weight.numel():
                continue
            sparse = relinear(layer, SparseLinear)
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                warnings.simplefilter("ignore")
                sparse.csr_weight = weight.to_sparse_csr()
            replace_module(model, layer, sparse)
            swapped.append((layer, sparse))
        yield len(swapped)
    finally:
        for layer, sparse in reversed(swapped):
            replace_module(model, sparse, layer)
