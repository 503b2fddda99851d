"""Kronecker-product algebra behind the separable structured transformation.

The nearest Kronecker product of a dense matrix is in :mod:`sstorch.functional.nearest`.

Conventions (used everywhere in sstorch)
----------------------------------------
A separable map with K modes has factors ``U_k`` of shape ``(m_k, n_k)``. It acts on a tensor
``X`` of shape ``(n_1, ..., n_K)`` by mode products::

    Y = X ×1 U_1 ×2 U_2 … ×K U_K,     Y[i_1..i_K] = Σ_j X[j_1..j_K] Π_k U_k[i_k, j_k]

PyTorch flattens row-major (the *last* index varies fastest), so with ``x = X.flatten()``::

    Y.flatten() = (U_1 ⊗ U_2 ⊗ … ⊗ U_K) @ x

This is the same matrix the paper writes ``W = U_K ⊗ … ⊗ U_1`` with column-major ``vec``.
A rank-R map is a sum of R such terms; factors are stored stacked as ``(R, m_k, n_k)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["kron", "kron_sum", "kron_sum_fast", "mode_products"]


def kron(*mats: Tensor) -> Tensor:
    """Explicit Kronecker product ``mats[0] ⊗ mats[1] ⊗ …`` (for tests and ``to_dense``)."""
    if not mats:
        raise ValueError("kron needs at least one matrix")
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


def kron_sum(factors: Sequence[Tensor]) -> Tensor:
    """Dense ``W = Σ_r U_1[r] ⊗ … ⊗ U_K[r]`` from stacked factors of shape ``(R, m_k, n_k)``."""
    rank = factors[0].shape[0]
    return sum(kron(*(u[r] for u in factors)) for r in range(rank))


def mode_products(x: Tensor, factors: Sequence[Tensor], strategy: str = "auto") -> Tensor:
    """Apply ``Y = Σ_r X ×1 U_1[r] … ×K U_K[r]`` without forming the Kronecker product.

    Args:
        x: ``(B, n_1, ..., n_K)``.
        factors: K tensors of shape ``(R, m_k, n_k)``.
        strategy: ``"left"`` (R = 1), ``"cyclic"``, ``"unfold"`` (R = 1), ``"dense"`` or
            ``"auto"``.

    Returns:
        ``(B, m_1, ..., m_K)``.

    Every mode is one GEMM (or one batched GEMM); the strategies differ in data movement:

    * ``left``: view the running tensor as ``(P, n_k, rest)`` (P = B·m_1⋯m_{k−1}) and multiply by
      ``U_k`` from the left with a stride-0 batch of the factor: no copy of the activations;
      the last mode is a single ``(P, n_K) @ U_Kᵀ`` GEMM. Modes come out in order.
    * ``cyclic``: contract against ``U_kᵀ`` with the contracted mode moved last,
      ``(B, rest, n_k) @ (n_k, m_k)``; after K steps the modes are back in order. For R > 1 the
      R terms are the batch of one bmm per mode, ``(R, B·rest, n_k) @ (R, n_k, m_k)``.
    * ``unfold``: the mode-k unfolding ``U_k @ X_(k)`` (tensorly's ``mode_dot``).

    * ``dense``: materialize ``W = Σ_r ⊗_k U_k[r]`` once per call (``R M N`` multiply-adds,
      contracting r inside one einsum) and apply one ``(B, N) @ Wᵀ`` GEMM.

    ``auto`` is ``left`` for R = 1 and ``cyclic`` for R > 1, the fastest on every shape of
    ``benchmarks/layer_speed.py`` — except when the mode products cost more than
    materializing: their cost ``R Σ_k (Π_{j<k} m_j)(Π_{j≥k} n_j) m_k`` multiply-adds per
    example exceeds ``M N`` once R is large (R ≳ 15 for (28,28)→(32,32)); then ``auto`` picks
    ``dense`` when ``B·modes > 1.25 (B M N + R M N)``. Never while tracing or exporting (the
    exported graph keeps the factors, see ``sstorch.export.onnx``).
    """
    batch = x.shape[0]
    rank = factors[0].shape[0]
    out_dims = [u.shape[1] for u in factors]
    if batch == 0:
        return x.new_zeros(0, *out_dims) + 0 * (x.sum() + sum(u.sum() for u in factors))
    if strategy == "auto":
        strategy = _auto_strategy(batch, [u.shape[2] for u in factors], out_dims, rank)
    if strategy not in _STRATEGIES:
        raise ValueError(
            f"strategy must be 'auto', 'left', 'cyclic', 'unfold' or 'dense', got {strategy!r}")
    if strategy in ("left", "unfold") and rank != 1:
        raise ValueError(f"strategy={strategy!r} supports rank 1 only")
    return _STRATEGIES[strategy](x, factors)


def _dense(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """Materialize ``W = Σ_r ⊗_k U_k[r]`` and apply one ``(B, N) @ Wᵀ`` GEMM."""
    batch = x.shape[0]
    out_dims = [u.shape[1] for u in factors]
    return (x.reshape(batch, -1) @ kron_sum_fast(factors).t()).reshape(batch, *out_dims)


def _left(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """R = 1: ``(P, n_k, rest)`` times ``U_k`` from the left (stride-0 batch), mode by mode."""
    in_dims = [u.shape[2] for u in factors]
    out_dims = [u.shape[1] for u in factors]
    # Reshapes use -1 for the leading size, so traced graphs (ONNX) keep a dynamic batch.
    y = x
    for k, u in enumerate(factors):
        u = u[0]
        if k == len(factors) - 1:
            y = y.reshape(-1, in_dims[k]) @ u.t()
        else:
            y = y.reshape(-1, in_dims[k], math.prod(in_dims[k + 1 :]))
            y = torch.bmm(u.expand(y.shape[0], *u.shape), y)
    return y.reshape(-1, *out_dims)


def _unfold(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """R = 1: the mode-k unfolding ``U_k @ X_(k)`` (tensorly's ``mode_dot``), mode by mode."""
    y = x
    for k, u in enumerate(factors):
        y = y.movedim(k + 1, 0)
        shape = y.shape
        y = (u[0] @ y.reshape(shape[0], -1)).reshape(u.shape[1], *shape[1:])
        y = y.movedim(0, k + 1)
    return y


def _cyclic(x: Tensor, factors: Sequence[Tensor]) -> Tensor:
    """``(B, rest, n_k) @ U_kᵀ`` with the contracted mode moved last; R terms as a bmm batch."""
    batch = x.shape[0]
    rank = factors[0].shape[0]
    in_dims = [u.shape[2] for u in factors]
    out_dims = [u.shape[1] for u in factors]
    if rank == 1:
        y = x
        for u in factors:
            y = torch.matmul(y.reshape(batch, u.shape[2], -1).transpose(1, 2), u[0].t())
        return y.reshape(batch, *out_dims)
    # Rank R: the first mode produces all R branches in one GEMM; later modes are one bmm each
    # with the R terms as its batch.
    u0 = factors[0]
    y = torch.matmul(x.reshape(batch, in_dims[0], -1).transpose(1, 2),
                     u0.reshape(rank * out_dims[0], in_dims[0]).t())  # (B, rest, R m_1)
    y = y.reshape(batch, -1, rank, out_dims[0]).permute(2, 0, 1, 3)  # (R, B, rest, m_1)
    for k in range(1, len(factors)):
        y = y.reshape(rank, batch, in_dims[k], -1).transpose(2, 3)  # (R, B, rest, n_k)
        y = torch.bmm(y.reshape(rank, -1, in_dims[k]), factors[k].transpose(1, 2))
    return y.reshape(rank, batch, *out_dims).sum(0)


_STRATEGIES = {"left": _left, "unfold": _unfold, "cyclic": _cyclic, "dense": _dense}


def _auto_strategy(batch: int, in_dims: Sequence[int], out_dims: Sequence[int],
                   rank: int) -> str:
    """The cheaper of mode products and materializing W (see :func:`mode_products`)."""
    modes = "left" if rank == 1 else "cyclic"
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return modes
    m_total, n_total = math.prod(out_dims), math.prod(in_dims)
    per_example = rank * sum(
        math.prod(out_dims[:k]) * math.prod(in_dims[k:]) * out_dims[k]
        for k in range(len(in_dims)))
    dense = batch * m_total * n_total + rank * m_total * n_total
    return "dense" if batch * per_example > 1.25 * dense else modes


def kron_sum_fast(factors: Sequence[Tensor]) -> Tensor:
    """``Σ_r U_1[r] ⊗ … ⊗ U_K[r]`` as one einsum (r contracted inside; no R-fold copy of W)."""
    k = len(factors)
    letters = "abcdefghijklmnopqstuvwxyz"
    rows, cols = letters[:k], letters[k : 2 * k]
    spec = ",".join(f"r{rows[i]}{cols[i]}" for i in range(k)) + f"->{rows}{cols}"
    m_total = math.prod(u.shape[1] for u in factors)
    return torch.einsum(spec, *factors).reshape(m_total, -1)
