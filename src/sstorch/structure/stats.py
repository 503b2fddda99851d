r"""Structure, conditioning and sparsity statistics of the separable layers of a model.

For ``W = U_1 ⊗ … ⊗ U_K`` the singular values of ``W`` are all products of the factors' ones,
so ``‖W‖₂ = Π_k ‖U_k‖₂`` (the layer's Lipschitz constant) and ``κ(W) = Π_k κ(U_k)`` when all
factors are tall or all wide; ``nnz(W) = Π_k nnz(U_k)``. :func:`layer_stats` reports them per
layer without forming ``W`` (except for small rank-R layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sstorch.functional.kronecker import kron
from sstorch.layers.base import structured_layers
from sstorch.layers.separable import SeparableLinear

__all__ = ["LayerStats", "layer_stats"]


def _kappa(u: Tensor) -> float:
    """Exact ``σ_max / σ_min`` (``σ_min`` the min(m, n)-th); inf if singular or zero."""
    s = torch.linalg.svdvals(u.detach().to(torch.float64))
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


@dataclass
class LayerStats:
    r"""Structure, conditioning and sparsity of one :class:`SeparableLinear`.

    Attributes:
        name: qualified module name in the model.
        in_shape, out_shape, rank: the layer's shapes and number R of Kronecker terms.
        factor_kappa: ``κ(U_k)`` for each factor k; for R > 1 the max over the R terms
            ``U_k[r]``.
        kappa: ``κ(W) = σ_max(W)/σ_min(W)`` (σ_min the min(M, N)-th singular value). For R = 1
            it is ``Π_k κ(U_k)``: the singular values of ``A ⊗ B`` are all products
            ``σ_i(A) σ_j(B)``, so ``κ(A⊗B) = κ(A)κ(B)`` over the nonzero ones, and those are all
            of W's singular values exactly when ``full_rank``; otherwise W is rank deficient and
            ``kappa = inf``. For R > 1 it is computed from ``layer.to_dense()`` when W has at
            most 4e6 entries, else ``nan``.
        full_rank: all factors tall-or-square, or all wide-or-square (W can have full rank).
        lipschitz: ``Π_k ‖U_k‖₂`` for R = 1 (equal to ``‖W‖₂``); ``Σ_r Π_k ‖U_k[r]‖₂`` for
            R > 1, an upper bound on ``‖W‖₂`` by the triangle inequality.
        nnz, numel: nonzero and total entries of the (masked) factors.
        nnz_dense: nonzeros of W. Exact for R = 1 (``Π_k nnz(U_k)``). For R > 1 the size of
            the union of the R terms' supports (structural: ignores accidental cancellation)
            when W has at most 4e6 entries, else the upper bound
            ``min(M N, Σ_r Π_k nnz(U_k[r]))``.
        sparsity: ``1 − nnz / numel``.
    """

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    rank: int
    factor_kappa: list[float]
    kappa: float
    full_rank: bool
    lipschitz: float
    nnz: int
    numel: int
    nnz_dense: int
    sparsity: float


_DENSE_LIMIT = 4_000_000


@torch.no_grad()
def _stats(name: str, layer: SeparableLinear) -> LayerStats:
    factors = [u.detach() for u in layer.effective_factors()]
    rank = layer.rank
    factor_kappa = [max(_kappa(u[r]) for r in range(rank)) for u in factors]
    full_rank = all(m >= n for m, n in zip(layer.out_shape, layer.in_shape, strict=True)) or all(
        m <= n for m, n in zip(layer.out_shape, layer.in_shape, strict=True)
    )
    dense_numel = layer.in_features * layer.out_features
    small = dense_numel <= _DENSE_LIMIT
    term_nnz = [math.prod(int((u[r] != 0).sum()) for u in factors) for r in range(rank)]
    if rank == 1:
        kappa = math.prod(factor_kappa) if full_rank else math.inf
        nnz_dense = term_nnz[0]
    else:
        kappa = _kappa(layer.to_dense()) if small else math.nan
        if small:
            support = [(u != 0).to(torch.float32) for u in factors]
            union = sum(kron(*(s[r] for s in support)) for r in range(rank))
            nnz_dense = int((union > 0).sum())
        else:
            nnz_dense = min(dense_numel, sum(term_nnz))
    nnz = sum(int((u != 0).sum()) for u in factors)
    numel = sum(u.numel() for u in factors)
    return LayerStats(
        name=name,
        in_shape=tuple(layer.in_shape),
        out_shape=tuple(layer.out_shape),
        rank=rank,
        factor_kappa=factor_kappa,
        kappa=kappa,
        full_rank=full_rank,
        lipschitz=layer.lipschitz_bound(),
        nnz=nnz,
        numel=numel,
        nnz_dense=nnz_dense,
        sparsity=1.0 - nnz / numel,
    )


def layer_stats(model: nn.Module) -> list[LayerStats]:
    """:class:`LayerStats` for every :class:`SeparableLinear` in ``model`` (masks applied)."""
    return [_stats(name, layer) for name, layer in structured_layers(model, SeparableLinear)]
