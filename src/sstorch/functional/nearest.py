"""Nearest Kronecker product: the best ``Σ_r U_1[r] ⊗ … ⊗ U_K[r]`` approximating a dense W.

Van Loan & Pitsianis (1993): rearranging ``W (M, N)`` into ``T (m_1 n_1, …, m_K n_K)`` turns
``U_1 ⊗ … ⊗ U_K`` into the rank-1 tensor ``vec(U_1) ∘ … ∘ vec(U_K)``, so the nearest Kronecker
sum in the Frobenius norm is a best rank-R approximation of T: a truncated SVD for K = 2
(Eckart–Young), CP-ALS for K > 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sstorch.functional.kronecker import kron_sum

__all__ = ["nearest_kronecker"]


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
