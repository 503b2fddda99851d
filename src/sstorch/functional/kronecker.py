"""Kronecker-product algebra behind the separable structured transformation.

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

__all__ = ["kron", "kron_sum", "kron_sum_fast", "mode_products", "nearest_kronecker"]


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
    in_dims = [u.shape[2] for u in factors]
    out_dims = [u.shape[1] for u in factors]
    if batch == 0:
        return x.new_zeros(0, *out_dims) + 0 * (x.sum() + sum(u.sum() for u in factors))
    if strategy == "auto":
        strategy = _auto_strategy(batch, in_dims, out_dims, rank)
    if strategy == "dense":
        return (x.reshape(batch, -1) @ kron_sum_fast(factors).t()).reshape(batch, *out_dims)
    if strategy in ("left", "unfold") and rank != 1:
        raise ValueError(f"strategy={strategy!r} supports rank 1 only")
    if strategy == "left":
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
    if strategy == "unfold":
        y = x
        for k, u in enumerate(factors):
            y = y.movedim(k + 1, 0)
            shape = y.shape
            y = (u[0] @ y.reshape(shape[0], -1)).reshape(u.shape[1], *shape[1:])
            y = y.movedim(0, k + 1)
        return y
    if strategy != "cyclic":
        raise ValueError(
            f"strategy must be 'auto', 'left', 'cyclic', 'unfold' or 'dense', got {strategy!r}")
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


def _rearrange(weight: Tensor, in_shape: Sequence[int], out_shape: Sequence[int]) -> Tensor:
    """Van Loan–Pitsianis rearrangement: ``W (M, N) → T (m_1 n_1, …, m_K n_K)``.

    Under it ``U_1 ⊗ … ⊗ U_K`` becomes the rank-1 tensor ``vec(U_1) ∘ … ∘ vec(U_K)``, so the
    nearest Kronecker product (Frobenius norm) is the best rank-1 (CP) approximation of T.
    """
    k = len(in_shape)
    t = weight.reshape(*out_shape, *in_shape)
    perm = [i for pair in zip(range(k), range(k, 2 * k), strict=True) for i in pair]
    return t.permute(perm).reshape([m * n for m, n in zip(out_shape, in_shape, strict=True)])


def _leading_left_singular_vectors(a: Tensor, r: int) -> Tensor:
    """Top-r left singular vectors; randomized (exact for rank ≤ q) when ``a`` is large."""
    if min(a.shape) <= 1024:
        return torch.linalg.svd(a, full_matrices=False)[0][:, :r]
    q = min(r + 8, *a.shape)
    return torch.svd_lowrank(a, q=q, niter=6)[0][:, :r]


def _cp_als(t: Tensor, rank: int, n_iter: int, tol: float) -> list[Tensor]:
    """Rank-R CP decomposition of a K-way tensor by alternating least squares.

    Initialised with the leading left singular vectors of each unfolding (HOSVD), which for
    R = 1 makes this the higher-order power method. Returns factor matrices ``A_k (I_k, R)``
    with ``T ≈ Σ_r A_1[:, r] ∘ … ∘ A_K[:, r]``.
    """
    k_modes = t.dim()
    letters = "abcdefghij"[:k_modes]
    mats = []
    for k in range(k_modes):
        unfold = t.movedim(k, 0).reshape(t.shape[k], -1)
        a = _leading_left_singular_vectors(unfold, rank)
        if a.shape[1] < rank:  # mode smaller than the rank: pad with small random columns
            gen = torch.Generator(device=t.device).manual_seed(k)
            pad = torch.randn(t.shape[k], rank - a.shape[1], dtype=t.dtype, device=t.device,
                              generator=gen)
            a = torch.cat([a, 1e-3 * pad], 1)
        mats.append(a)
    t_norm2 = t.pow(2).sum()
    prev_err = None
    for _ in range(n_iter):
        for k in range(k_modes):
            others = [i for i in range(k_modes) if i != k]
            # MTTKRP: contract T with all other factors, keeping mode k and the rank index.
            eq = letters + "," + ",".join(f"{letters[i]}r" for i in others) + f"->{letters[k]}r"
            mttkrp = torch.einsum(eq, t, *[mats[i] for i in others])
            gram = torch.ones(rank, rank, dtype=t.dtype, device=t.device)
            for i in others:
                gram = gram * (mats[i].T @ mats[i])
            mats[k] = torch.linalg.lstsq(gram, mttkrp.T).solution.T
        # The true residual (the expanded ‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖² loses precision below 1e-8).
        eq_full = ",".join(f"{letters[i]}r" for i in range(k_modes)) + "->" + letters
        err = (t - torch.einsum(eq_full, *mats)).pow(2).sum().sqrt() / t_norm2.sqrt()
        if prev_err is not None and abs(prev_err - err.item()) < tol:
            break
        prev_err = err.item()
    return mats


def nearest_kronecker(
    weight: Tensor,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    rank: int = 1,
    n_iter: int = 200,
    tol: float = 1e-10,
) -> tuple[list[Tensor], float]:
    """Best sum of ``rank`` Kronecker products approximating a dense weight.

    Minimises ``‖W − Σ_r U_1[r] ⊗ … ⊗ U_K[r]‖_F`` over factors ``U_k[r] (m_k, n_k)``.
    After the Van Loan–Pitsianis rearrangement this is a best rank-R approximation problem:
    for K = 2 a matrix, solved exactly by the truncated SVD (Eckart–Young); for K > 2 a tensor,
    solved by CP-ALS from an HOSVD start (exact whenever W is an exact rank-R Kronecker sum
    with a unique decomposition). K = 1 returns W itself.

    The scale of each term is split evenly across its factors (equal Frobenius norms).

    Returns:
        ``(factors, rel_err)``: factors as tensors ``(R, m_k, n_k)`` in ``weight``'s dtype, and
        ``‖W − Ŵ‖_F / ‖W‖_F``.
    """
    in_shape, out_shape = list(in_shape), list(out_shape)
    if len(in_shape) != len(out_shape):
        raise ValueError(f"in_shape {tuple(in_shape)} and out_shape {tuple(out_shape)} must have "
                         "the same number of modes")
    m_total, n_total = math.prod(out_shape), math.prod(in_shape)
    if weight.dim() != 2 or tuple(weight.shape) != (m_total, n_total):
        raise ValueError(
            f"weight must have shape (prod(out_shape), prod(in_shape)) = ({m_total}, {n_total}) "
            f"for out_shape={tuple(out_shape)}, in_shape={tuple(in_shape)}; got "
            f"{tuple(weight.shape)}"
        )
    w = weight.detach().to(torch.float64)
    k_modes = len(in_shape)
    if k_modes == 1:
        if rank != 1:
            raise ValueError("a single-mode separable layer is dense; use rank=1")
        return [weight.detach().clone().unsqueeze(0)], 0.0
    t = _rearrange(w, in_shape, out_shape)
    if k_modes == 2:
        if min(t.shape) <= 1024:  # exact truncated SVD (Eckart–Young optimal)
            u, s, vh = torch.linalg.svd(t, full_matrices=False)
        else:  # top-R only: randomized range finder with power iterations (Halko et al.)
            u, s, v = torch.svd_lowrank(t, q=min(rank + 8, *t.shape), niter=6)
            vh = v.T
        r = min(rank, s.numel())
        mats = [u[:, :r] * s[:r].sqrt(), vh[:r].T * s[:r].sqrt()]
        if r < rank:  # more terms than the rearranged matrix has singular values
            mats = [torch.cat([a, torch.zeros(a.shape[0], rank - r, dtype=a.dtype)], 1)
                    for a in mats]
    else:
        mats = _cp_als(t, rank, n_iter, tol)
    # Balance: give every factor of term r the same Frobenius norm.
    norms = torch.stack([a.norm(dim=0) for a in mats])  # (K, R)
    geo = norms.clamp_min(1e-300).log().mean(0).exp()
    mats = [a * (geo / norms[i].clamp_min(1e-300)) for i, a in enumerate(mats)]
    factors = [
        a.T.reshape(rank, m, n) for a, m, n in zip(mats, out_shape, in_shape, strict=True)
    ]
    approx = kron_sum(factors)
    w_norm = w.norm()
    rel_err = float((w - approx).norm() / w_norm) if w_norm > 0 else 0.0
    return [f.to(weight.dtype) for f in factors], rel_err
