r"""Tensorized layers: W stored as a Tucker tensor or a tensor train (tensorly-torch).

tensorly-torch's ``FactorizedLinear`` (Kossaifi et al., "TensorLy: Tensor Learning in Python",
JMLR 2019): W is reshaped into the tensor of shape
``(m_1, …, m_K, n_1, …, n_K)`` and stored in **Tucker** form
``W = G ×1 V_1 ×2 … ×2K V_2K`` (core ``G`` of shape ``(r_1, …, r_2K)``, factors
``V_j (d_j × r_j)``; params ``Π r_j + Σ d_j r_j``) or as a **tensor train** / TT-matrix
(Novikov et al. 2015, "Tensorizing Neural Networks"):
``W[(i_1..i_K), (j_1..j_K)] = G_1[i_1, j_1] G_2[i_2, j_2] ⋯ G_K[i_K, j_K]`` with cores
``G_k (r_{k-1} × m_k × n_k × r_k)``, ``r_0 = r_K = 1``; params ``Σ r_{k-1} m_k n_k r_k``.
With K = 2 modes a TT-matrix of rank r is a sum of r Kronecker products
``Σ_α G_1[:, :, α] ⊗ G_2[α]``, i.e. exactly a :class:`~sstorch.layers.separable.SeparableLinear`
of Kronecker rank r (without the paper's constraints).

tensorly-torch is optional (``pip install -e '.[bench]'``) and imported only when a tensorized
layer is built.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sstorch.layers.base import (
    StructuredLinear,
    check_dense,
    copy_bias,
    register_layer,
    relative_error,
)

__all__ = ["TensorizedLinear", "import_tltorch"]

# Our name → (tltorch's name, tltorch's forward implementation). tltorch's factorized Tucker
# forward is a single unoptimised einsum (2.7 GB for a batch of 128 at rank 6) and its
# "reconstructed" one rebuilds the dense W at every call (12 ms at 784 → 1024), so Tucker layers
# use our own mode-by-mode contraction (``TensorizedLinear._tucker_forward``); the TT-matrix
# contraction of tltorch is cheap (1.5 ms).
_TLTORCH = {"tucker": ("tucker", "reconstructed"), "tt": ("blocktt", "factorized")}


def import_tltorch() -> Any:
    """Import tensorly-torch (quietly), or say how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tltorch
    except ImportError as exc:
        raise ModuleNotFoundError(
            "model.structure tucker/tt needs tensorly-torch, which is not installed; install the "
            "bench extra: pip install -e '.[bench]'") from exc
    return tltorch


def _tltorch_rank(factorization: str, rank: float, out_shape: tuple[int, ...],
                  in_shape: tuple[int, ...]) -> float | int | tuple[int, ...]:
    """An int rank ≥ 1 or a fraction of the dense parameters in (0, 1), as tltorch takes it.

    An int Tucker rank is capped at each mode's size: a larger rank only adds parameters that
    the core can absorb (tltorch would allocate them).
    """
    if rank < 1:
        if not rank > 0:
            raise ValueError(f"rank must be an int ≥ 1 or a fraction in (0, 1), got {rank!r}")
        return float(rank)
    if rank != int(rank):
        raise ValueError(f"a rank ≥ 1 must be an int, got {rank!r}")
    if factorization == "tucker":
        return tuple(min(int(rank), d) for d in (*out_shape, *in_shape))
    return int(rank)


class TensorizedLinear(StructuredLinear):
    r"""A ``Π n_k → Π m_k`` linear layer whose weight is a Tucker tensor or a tensor train.

    Wraps ``tltorch.FactorizedLinear`` with ``in_tensorized_features = in_shape`` and
    ``out_tensorized_features = out_shape`` (math and papers: the module docstring):

    * ``factorization="tucker"``: W as a Tucker tensor of shape ``(*out_shape, *in_shape)``
      (tltorch ``"tucker"``), applied without ever forming W: the input tensor ``X`` (shape
      ``in_shape``) is contracted mode by mode with the input factors, then with the core, then
      expanded by the output factors, ``Y = (X ×_k V_{in,k}ᵀ) · G ×_k V_{out,k}`` (see
      :meth:`macs_per_example`);
    * ``factorization="tt"``: W as a TT-matrix (tltorch ``"blocktt"``), contracted core by core
      with the input (``implementation="factorized"``).

    ``rank`` is an int (the Tucker rank of every mode, capped at the mode's size; the TT rank of
    every bond) or a fraction in (0, 1) of the dense layer's weight parameters, which tltorch
    turns into ranks. Init: tltorch draws the factors so that W has i.i.d.-like entries of a
    given std; we ask for ``nn.Linear``'s ``1/√(3n)`` instead of tltorch's ``√5/√n`` (√15 ≈ 3.9×
    larger per layer), and draw the bias ``U(±1/√n)``.

    Shapes:
        input ``(*batch, Π n_k)`` → output ``(*batch, Π m_k)`` (flat features, like
        ``nn.Linear``).
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], factorization: str,
                 rank: float, bias: bool = True) -> None:
        super().__init__()
        if factorization not in _TLTORCH:
            raise ValueError(f"factorization must be one of {sorted(_TLTORCH)}, got "
                             f"{factorization!r}")
        tltorch = import_tltorch()
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in out_shape)
        if factorization == "tt" and len(self.in_shape) != len(self.out_shape):
            raise ValueError(f"a TT-matrix needs as many input as output modes, got "
                             f"{self.in_shape} → {self.out_shape}")
        self.factorization = factorization
        self.in_features, self.out_features = math.prod(self.in_shape), math.prod(self.out_shape)
        name, implementation = _TLTORCH[factorization]
        with warnings.catch_warnings():  # tensorly warns about how it reads int / float ranks
            warnings.simplefilter("ignore")
            self.layer = tltorch.FactorizedLinear(
                in_tensorized_features=self.in_shape, out_tensorized_features=self.out_shape,
                bias=bias, factorization=name,
                rank=_tltorch_rank(factorization, rank, self.out_shape, self.in_shape),
                implementation=implementation)
        self.reset_parameters()

    @property
    def rank(self) -> list[int]:
        """tltorch's resolved ranks: Tucker ``(r_1..r_2K)``, TT ``(1, r_1, …, 1)``."""
        return [int(r) for r in self.layer.rank]

    def reset_parameters(self) -> None:
        """W entries ``N(0, 1/(3n))`` (``nn.Linear``'s variance), bias ``U(±1/√n)``."""
        with torch.no_grad():
            self.layer.weight.normal_(0, 1 / math.sqrt(3 * self.in_features))
            if self.layer.bias is not None:
                b = 1 / math.sqrt(self.in_features)
                self.layer.bias.uniform_(-b, b)

    def forward(self, x: Tensor) -> Tensor:
        if self.factorization == "tucker":
            return self._tucker_forward(x)
        return self.layer(x)

    def _tucker_forward(self, x: Tensor) -> Tensor:
        """``y = W x + b`` with W in Tucker form, contracted factor by factor (W never formed)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features (the last "
                             f"dimension), got shape {tuple(x.shape)}")
        weight = self.layer.weight
        k_out = len(self.out_shape)
        out_factors, in_factors = weight.factors[:k_out], weight.factors[k_out:]
        batch = x.shape[:-1]
        z = x.reshape(-1, *self.in_shape)
        for factor in in_factors:  # (B, n_k, …, n_K, r'_1, …) → (B, n_{k+1}, …, r'_1, …, r'_k)
            z = torch.tensordot(z, factor, dims=([1], [0]))
        k_in = len(in_factors)  # (B, r'_1..r'_K) · G(r_1..r_K', r'_1..r'_K) → (B, r_1..r_K')
        z = torch.tensordot(z, weight.core, dims=(list(range(1, 1 + k_in)),
                                                  list(range(k_out, k_out + k_in))))
        for factor in out_factors:  # (B, r_k, …, m_1, …) → (B, r_{k+1}, …, m_1, …, m_k)
            z = torch.tensordot(z, factor, dims=([1], [1]))
        y = z.reshape(*batch, self.out_features)
        return y if self.layer.bias is None else y + self.layer.bias

    def to_dense(self) -> Tensor:
        """The ``(Π m_k, Π n_k)`` weight."""
        return self.layer.weight.to_matrix().reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def load_dense_(self, weight: Tensor, bias: Tensor | None = None) -> float:
        """Decompose a dense ``(Π m_k, Π n_k)`` weight at this layer's ranks; copy ``bias``.

        Tucker: higher-order orthogonal iteration (tensorly's ``tucker``, SVD init); TT: TT-SVD
        (``tensor_train_matrix``). The factors become new parameters: build the optimizer after.

        Returns:
            the relative error ``‖W − Ŵ‖_F / ‖W‖_F``.
        """
        w = check_dense(self, weight)
        ref = next(self.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.layer.weight.init_from_matrix(w.to(ref))
        copy_bias(self.layer.bias, bias)
        return relative_error(w, self.to_dense())

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_shape: Sequence[int], out_shape: Sequence[int],
                    factorization: str, rank: float) -> TensorizedLinear:
        """Decompose a (trained) ``nn.Linear`` (see :meth:`load_dense_`); the relative error is
        stored in ``approx_error``."""
        layer = cls(in_shape, out_shape, factorization, rank, bias=linear.bias is not None)
        layer.to(linear.weight)
        layer.approx_error = layer.load_dense_(linear.weight, linear.bias)
        return layer

    @property
    def bias(self) -> Tensor | None:
        return self.layer.bias

    @property
    def kind(self) -> str:  # type: ignore[override]
        """``"tucker"`` or ``"tt"``."""
        return self.factorization

    def shape_text(self) -> str:
        return f"{self.in_features} → {self.out_features} (rank {self.rank})"

    def macs_per_example(self) -> int:
        """Multiply-accumulates of one forward pass, bias excluded.

        Tucker (input ranks ``s_k``, output ranks ``r_k``): the input contractions
        ``Σ_k Π_{j≤k} s_j Π_{j≥k} n_j``, the core ``Π s_j Π r_j`` and the output expansions
        ``Σ_k Π_{j≤k} m_j Π_{j≥k} r_j``. TT: the core-by-core contraction,
        ``Σ_k r_{k-1} r_k Π_{j≤k} m_j Π_{j≥k} n_j``.
        """
        r = self.rank
        if self.factorization == "tucker":
            k_out = len(self.out_shape)
            r_out, r_in = r[:k_out], r[k_out:]
            macs = math.prod(r_out) * math.prod(r_in)
            for k in range(len(self.in_shape)):
                macs += math.prod(r_in[: k + 1]) * math.prod(self.in_shape[k:])
            for k in range(k_out):
                macs += math.prod(self.out_shape[: k + 1]) * math.prod(r_out[k:])
            return macs
        return sum(r[k] * r[k + 1] * math.prod(self.out_shape[: k + 1])
                   * math.prod(self.in_shape[k:]) for k in range(len(self.in_shape)))

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, out_shape={self.out_shape}, "
                f"factorization={self.factorization!r}, rank={self.rank}, "
                f"params={self.n_params}")


def _build(factorization: str) -> None:
    @register_layer(factorization)
    def build(in_shape: Sequence[int], out_shape: Sequence[int], rank: float,
              bias: bool) -> TensorizedLinear:
        return TensorizedLinear(in_shape, out_shape, factorization, rank, bias)


for _name in _TLTORCH:
    _build(_name)
