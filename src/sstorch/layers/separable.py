"""The separable structured transformation: a Kronecker-factored replacement for ``nn.Linear``.

Wei et al., "Learning Robust and Lightweight Model through Separable Structured
Transformations" (arXiv 2112.13551) replace a fully-connected layer's weight by a Kronecker
product of small matrices applied mode by mode to the *unflattened* input.

Pruning (:mod:`sstorch.pruning.factor`) gives factor ``k`` a ``mask_k`` buffer; the forward
uses ``U_k ⊙ mask_k`` and :meth:`SeparableLinear.apply_masks_` sets the stored masked entries to
exactly 0. The layer holds no other pruning state: keeping those zeros through optimizer steps
is the job of the optimizer's owner (:func:`sstorch.pruning.masks.keep_pruned_zero`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from sstorch.functional.kronecker import kron_sum, mode_products
from sstorch.functional.nearest import nearest_kronecker
from sstorch.layers.base import StructuredLinear

__all__ = ["SeparableLinear"]


def _as_shape(shape: int | Sequence[int], what: str) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ValueError(f"{what} must be an int or a sequence of ints, got {shape!r}")
    shape = [s.item() if isinstance(s, Tensor) else s for s in shape]
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise ValueError(f"{what} must contain ints only, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{what} must be a non-empty sequence of positive ints, got {shape}")
    return shape


def _spectral_norm(u: Tensor) -> float:
    return float(torch.linalg.matrix_norm(u.detach().to(torch.float64), ord=2))


class _DenseModes(nn.Sequential):
    """``nn.Linear`` wrapped to take ``(*batch, *in_shape)`` and return ``(*batch, *out_shape)``."""

    def __init__(self, linear: nn.Linear, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__(nn.Flatten(-len(in_shape)), linear, nn.Unflatten(-1, out_shape))


class SeparableLinear(StructuredLinear):
    r"""Separable structured linear layer ``Y = Σ_r X ×1 U_1[r] ×2 U_2[r] … ×K U_K[r] + b``.

    The dense equivalent is ``W = Σ_r U_1[r] ⊗ U_2[r] ⊗ … ⊗ U_K[r]`` (row-major vec, i.e.
    ``torch.flatten``; the paper writes the same matrix as ``U_K ⊗ … ⊗ U_1`` with column-major
    vec), so that::

        layer(x).flatten(-K) == x.flatten(-K) @ layer.to_dense().T + layer.bias

    Parameters fall from ``Π m_k n_k`` (dense) to ``R Σ m_k n_k``. Spectra multiply across
    factors: for R = 1, ``‖W‖₂ = Π ‖U_k‖₂`` and ``κ(W) = Π κ(U_k)`` (when all factors are tall
    or all wide; otherwise W is rank-deficient).

    Args:
        in_shape: ``(n_1, …, n_K)``, the unflattened input (e.g. ``(28, 28)`` or ``(512, 7, 7)``).
        out_shape: ``(m_1, …, m_K)``, same number of modes.
        bias: add a dense bias of shape ``out_shape``.
        rank: number R of Kronecker terms summed (R = 1 is the paper's layer).
        flatten: if True the layer is a drop-in for ``nn.Linear``: it takes
            ``(*batch, Π n_k)`` and returns ``(*batch, Π m_k)``; the mode products still act on
            the unflattened view. If False (default) it takes ``(*batch, *in_shape)`` and returns
            ``(*batch, *out_shape)``.

    Shapes:
        input ``(*batch, n_1, …, n_K)`` → output ``(*batch, m_1, …, m_K)``.

    Example:
        >>> layer = SeparableLinear((28, 28), (32, 32))
        >>> layer(torch.randn(8, 28, 28)).shape
        torch.Size([8, 32, 32])
    """

    kind: ClassVar[str] = "separable"

    def __init__(
        self,
        in_shape: int | Sequence[int],
        out_shape: int | Sequence[int],
        bias: bool = True,
        rank: int = 1,
        flatten: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = _as_shape(in_shape, "in_shape")
        self.out_shape = _as_shape(out_shape, "out_shape")
        if len(self.in_shape) != len(self.out_shape):
            raise ValueError(
                f"in_shape {self.in_shape} and out_shape {self.out_shape} must have the same "
                "number of modes; pad the shorter one with 1s, e.g. (10,) -> (1, 10)"
            )
        if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        self.rank = int(rank)
        self.flatten = bool(flatten)
        self.in_features = math.prod(self.in_shape)
        self.out_features = math.prod(self.out_shape)
        kw = {"device": device, "dtype": dtype}
        self.factors = nn.ParameterList(
            nn.Parameter(torch.empty(rank, m, n, **kw))
            for m, n in zip(self.out_shape, self.in_shape, strict=True)
        )
        self.bias = nn.Parameter(torch.empty(self.out_features, **kw)) if bias else None
        self.reset_parameters()

    @property
    def n_modes(self) -> int:
        """K, the number of modes."""
        return len(self.in_shape)

    def reset_parameters(self) -> None:
        """Variance-matched init: ``Var(W_ij) = 1/(3N)``, as ``nn.Linear``'s default.

        Entries of W are sums of R products of K independent factor entries, so
        ``Var(W_ij) = R Π_k Var(U_k)``. Each ``U_k ~ U(-b_k, b_k)`` with
        ``b_k² = 3^{(K-1)/K} / (n_k R^{1/K})`` gives ``R Π_k b_k²/3 = 1/(3N)``; the bias is
        ``U(-1/√N, 1/√N)`` like ``nn.Linear``.
        """
        k, r = self.n_modes, self.rank
        with torch.no_grad():
            for u, n in zip(self.factors, self.in_shape, strict=True):
                bound = math.sqrt(3 ** ((k - 1) / k) / (n * r ** (1 / k)))
                u.uniform_(-bound, bound)
            if self.bias is not None:
                b = 1 / math.sqrt(self.in_features)
                self.bias.uniform_(-b, b)

    def effective_factors(self) -> list[Tensor]:
        """Factors as used in the forward pass (pruning masks applied, see ``constraints``)."""
        out = []
        for k, u in enumerate(self.factors):
            mask = getattr(self, f"mask_{k}", None)
            out.append(u if mask is None else u * mask)
        return out

    def masks(self) -> list[tuple[int, Tensor]]:
        """``(k, mask_k)`` for every pruned factor."""
        return [(k, m) for k in range(self.n_modes)
                if (m := getattr(self, f"mask_{k}", None)) is not None]

    @torch.no_grad()
    def apply_masks_(self) -> None:
        """Set masked factor entries to exactly 0 (the forward pass masks them anyway)."""
        for k, mask in self.masks():
            self.factors[k].mul_(mask)

    def forward(self, x: Tensor) -> Tensor:
        k = self.n_modes
        if self.flatten:
            if x.dim() < 1 or x.shape[-1] != self.in_features:
                raise ValueError(
                    f"{self.__class__.__name__}(flatten=True) expects input (*batch, "
                    f"{self.in_features}), got {tuple(x.shape)}"
                )
            batch_shape = x.shape[:-1]
        else:
            if x.dim() < k or tuple(x.shape[x.dim() - k :]) != self.in_shape:
                raise ValueError(
                    f"{self.__class__.__name__} expects input (*batch, "
                    f"{', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}; "
                    "reshape it, or build the layer with flatten=True to take flat features"
                )
            batch_shape = x.shape[: x.dim() - k]
        y = mode_products(x.reshape(-1, *self.in_shape), self.effective_factors())
        y = y.reshape(-1, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        if self.flatten:
            return y.reshape(*batch_shape, self.out_features)
        return y.reshape(*batch_shape, *self.out_shape)

    def to_dense(self) -> Tensor:
        """Equivalent dense weight ``W (Π m_k, Π n_k) = Σ_r U_1[r] ⊗ … ⊗ U_K[r]``."""
        return kron_sum(self.effective_factors())

    def effective_tensors(self) -> list[tuple[Tensor, Tensor]]:
        """``(U_k, U_k ⊙ mask_k)`` for every factor, then ``(b, b)``."""
        pairs = list(zip(self.factors, self.effective_factors(), strict=True))
        return pairs + ([(self.bias, self.bias)] if self.bias is not None else [])

    def shape_text(self) -> str:
        """``n_1×…×n_K → m_1×…×m_K``, with `` (rank R)`` when R > 1."""
        return (f"{'×'.join(map(str, self.in_shape))} → {'×'.join(map(str, self.out_shape))}"
                + (f" (rank {self.rank})" if self.rank > 1 else ""))

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        r"""``Σ_r Π_k ‖U_k[r]‖₂`` (masks applied), computed in fp64.

        For R = 1 this is ``Π_k ‖U_k‖₂ = ‖W‖₂`` exactly (the singular values of ``A ⊗ B`` are
        the products ``σ_i(A) σ_j(B)``); for R > 1 an upper bound on ``‖W‖₂`` by the triangle
        inequality.
        """
        factors = [u.detach() for u in self.effective_factors()]
        if self.rank == 1:
            return math.prod(_spectral_norm(u[0]) for u in factors)
        return sum(math.prod(_spectral_norm(u[r]) for u in factors) for r in range(self.rank))

    @torch.no_grad()
    def load_dense_(self, weight: Tensor, bias: Tensor | None = None) -> float:
        """Set the factors to the nearest Kronecker sum of a dense ``(M, N)`` weight, in fp64
        (:func:`~sstorch.functional.nearest.nearest_kronecker`); copy ``bias`` if given.

        Returns:
            the relative error ``‖W − Ŵ‖_F / ‖W‖_F``.
        """
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"dense weight {tuple(weight.shape)} does not fit the separable "
                             f"layer's {self.out_features}×{self.in_features}")
        factors, err = nearest_kronecker(weight.to(torch.float64), self.in_shape,
                                         self.out_shape, rank=self.rank)
        for p, f in zip(self.factors, factors, strict=True):
            p.copy_(f.to(p.dtype))
        if bias is not None and self.bias is not None:
            self.bias.copy_(bias.reshape(self.bias.shape))
        return float(err)

    def to_linear(self) -> nn.Module:
        """The equivalent ``nn.Linear`` (masks applied); wrapped in ``Flatten → Linear →
        Unflatten`` when the layer keeps its modes (``flatten=False``)."""
        lin = super().to_linear()
        return lin if self.flatten else _DenseModes(lin, self.in_shape, self.out_shape)

    def macs_per_example(self) -> int:
        """Multiply-accumulates of one forward pass per example (one token)."""
        total = 0
        for k in range(self.n_modes):
            total += (
                math.prod(self.out_shape[:k])
                * math.prod(self.in_shape[k + 1 :])
                * self.out_shape[k]
                * self.in_shape[k]
            )
        return total * self.rank

    def extra_repr(self) -> str:
        ins = "×".join(map(str, self.in_shape))
        outs = "×".join(map(str, self.out_shape))
        return (
            f"in_shape=({ins}), out_shape=({outs}), rank={self.rank}, "
            f"bias={self.bias is not None}, flatten={self.flatten}, "
            f"params={self.n_params}, compression={self.compression:.1f}x"
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        rank: int = 1,
        flatten: bool = True,
    ) -> SeparableLinear:
        """Best Kronecker-structured approximation of a (trained) ``nn.Linear``.

        Uses :func:`sstorch.functional.nearest.nearest_kronecker` (Van Loan–Pitsianis
        rearrangement +
        truncated SVD for K = 2, CP-ALS for K > 2). Exact when W is an exact Kronecker (sum).
        The relative Frobenius error ``‖W − Ŵ‖_F / ‖W‖_F`` is stored in ``approx_error``.
        ``flatten`` defaults to True so the result is a drop-in replacement for ``linear``.
        """
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        in_shape, out_shape = _as_shape(in_shape, "in_shape"), _as_shape(out_shape, "out_shape")
        if math.prod(in_shape) != linear.in_features:
            raise ValueError(
                f"prod(in_shape) must equal linear.in_features={linear.in_features}; "
                f"in_shape={in_shape} has prod {math.prod(in_shape)}"
            )
        if math.prod(out_shape) != linear.out_features:
            raise ValueError(
                f"prod(out_shape) must equal linear.out_features={linear.out_features}; "
                f"out_shape={out_shape} has prod {math.prod(out_shape)}"
            )
        w = linear.weight
        layer = cls(in_shape, out_shape, bias=linear.bias is not None, rank=rank,
                    flatten=flatten, device=w.device, dtype=w.dtype)
        factors, err = nearest_kronecker(w, in_shape, out_shape, rank=rank)
        with torch.no_grad():
            for p, f in zip(layer.factors, factors, strict=True):
                p.copy_(f)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.approx_error = err
        return layer

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Pruning masks are buffers created on demand: the checkpoint decides whether the layer
        # is pruned. Recreate masks it has, drop masks it lacks, and keep the zeros real.
        for k in range(self.n_modes):
            key = f"{prefix}mask_{k}"
            has = getattr(self, f"mask_{k}", None) is not None
            if key in state_dict and not has:
                self.register_buffer(f"mask_{k}", torch.ones_like(self.factors[k]))
            elif key not in state_dict and has:
                delattr(self, f"mask_{k}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.masks():
            self.apply_masks_()
