r"""Low-rank layer ``W = A B``: the simplest baseline at a matched parameter budget.

``A (m×r)``, ``B (r×n)`` store ``r(m+n)`` parameters instead of ``mn`` (Denil et al. 2013,
"Predicting Parameters in Deep Learning"; Sainath et al. 2013, "Low-rank matrix factorization
for deep neural network training").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.layers.base import (
    StructuredLinear,
    check_dense,
    copy_bias,
    register_layer,
    relative_error,
)

__all__ = ["LowRankLinear"]


class LowRankLinear(StructuredLinear):
    r"""Rank-r dense layer ``y = A (B x) + b``, i.e. ``W = A B`` with ``A (m×r)``, ``B (r×n)``.

    The same map as ``nn.Linear(n, r, bias=False)`` followed by ``nn.Linear(r, m)``, kept as one
    module so that accounting (:func:`sstorch.structure.summary`) sees one layer with its dense
    equivalent.
    Parameters ``r(m + n)`` (+ ``m`` bias) instead of ``mn``; MACs ``r(m + n)`` per vector.

    Spectral init (Khodak et al. 2021, "Initialization and Regularization of Factorized Neural
    Layers"): the best rank-r approximation of an ``nn.Linear``-initialised ``W₀``
    (``U(±1/√n)`` entries) split evenly, ``A = U_r S_r^{1/2}``, ``B = S_r^{1/2} V_rᵀ``; the bias
    is ``U(±1/√n)``. Balanced factors matter: SGD moves ``W = AB`` by about
    ``(‖A‖₂² + ‖B‖₂²)`` times its step, so matching ``W``'s entry variance instead (``‖A‖₂²``
    ≈ m at rank 1) makes a rank-1 MLP diverge at the dense MLP's learning rate.

    Shapes:
        input ``(*batch, n)`` → output ``(*batch, m)``.
    """

    kind: ClassVar[str] = "lowrank"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), rank
        kw = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(self.out_features, rank, **kw))
        self.B = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.bias = nn.Parameter(torch.empty(self.out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spectral init: the truncated SVD of an ``nn.Linear``-initialised ``W₀``."""
        b = 1 / math.sqrt(self.in_features)
        w0 = torch.empty(self.out_features, self.in_features, dtype=torch.float64,
                         device=self.A.device).uniform_(-b, b)
        bias = None if self.bias is None else torch.empty_like(self.bias).uniform_(-b, b)
        self.load_dense_(w0, bias)

    @torch.no_grad()
    def load_dense_(self, weight: Tensor, bias: Tensor | None = None) -> float:
        """Set ``A, B`` from the truncated SVD of a dense ``(m, n)`` weight: ``A = U_r S_r^{1/2}``,
        ``B = S_r^{1/2} V_rᵀ`` (zero-padded when r > min(m, n)); copy ``bias`` if given.

        Returns:
            the relative error ``‖W − A B‖_F / ‖W‖_F``.
        """
        w = check_dense(self, weight)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[: self.rank].sqrt()
        k = root.numel()
        self.A.zero_()[:, :k] = (u[:, :k] * root).to(self.A)
        self.B.zero_()[:k] = (root[:, None] * vh[:k]).to(self.B)
        copy_bias(self.bias, bias)
        return relative_error(w, self.to_dense())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.B), self.A, self.bias)

    def to_dense(self) -> Tensor:
        """The ``(m, n)`` weight ``A B``."""
        return self.A @ self.B

    def macs_per_example(self) -> int:
        """``r (m + n)``: ``B x`` then ``A (B x)``."""
        return self.rank * (self.in_features + self.out_features)

    def shape_text(self) -> str:
        return f"{self.in_features} → {self.out_features} (rank {self.rank})"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}, params={self.n_params}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """Best rank-r approximation of a (trained) ``nn.Linear`` (Eckart–Young).

        ``W ≈ U_r S_r V_rᵀ`` (truncated SVD, optimal in the Frobenius and spectral norms) is split
        as ``A = U_r S_r^{1/2}``, ``B = S_r^{1/2} V_rᵀ``; the bias is copied. The relative error
        ``‖W − AB‖_F / ‖W‖_F`` is stored in ``approx_error``.
        """
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype)
        layer.approx_error = layer.load_dense_(w, linear.bias)
        return layer


@register_layer("lowrank")
def _build_lowrank(in_shape: Sequence[int], out_shape: Sequence[int], rank: float,
                   bias: bool) -> LowRankLinear:
    """The ``lowrank`` baseline on flat features; ``rank`` must be an int ≥ 1."""
    if rank != int(rank) or rank < 1:
        raise ValueError(f"the lowrank baseline needs an int rank ≥ 1, got {rank!r}")
    return LowRankLinear(math.prod(in_shape), math.prod(out_shape), int(rank), bias)
