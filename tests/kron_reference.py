"""References for the Kronecker tests (test_kronecker.py, test_separable.py), built
independently of the code under test: dense weights from explicit ``torch.kron`` chains in the
documented row-major convention, and the Van Loan–Pitsianis optimum recomputed with numpy.
"""

from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64


def explicit_dense(factors: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_r U_1[r] ⊗ … ⊗ U_K[r]`` by a plain ``torch.kron`` chain (row-major convention)."""
    total = None
    for r in range(factors[0].shape[0]):
        term = factors[0][r]
        for u in factors[1:]:
            term = torch.kron(term, u[r])
        total = term if total is None else total + term
    return total


def random_factors(rank, out_shape, in_shape, seed=0, dtype=F64) -> list[torch.Tensor]:
    """Standard-normal factors ``U_k`` of shape ``(rank, m_k, n_k)`` from their own generator."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rank, m, n, generator=g, dtype=dtype)
            for m, n in zip(out_shape, in_shape, strict=True)]


def vlp_optimal_error(w: np.ndarray, in_shape, out_shape, rank: int) -> float:
    """Van Loan–Pitsianis: best rank-R Kronecker-sum error of a K = 2 weight, via numpy SVD."""
    (m1, m2), (n1, n2) = out_shape, in_shape
    # W[(i1 i2), (j1 j2)] -> R[(i1 j1), (i2 j2)], so that A ⊗ B -> vec(A) vec(B)^T.
    rearranged = w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    s = np.linalg.svd(rearranged, compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)) / np.linalg.norm(w))
