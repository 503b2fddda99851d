r"""Penalties on Kronecker factors: sparsity and condition-number surrogates.

Wei et al. (arXiv 2112.13551) make separable layers both light and robust by penalising the
factors ``U_k`` of ``W = U_1 ⊗ … ⊗ U_K``:

* **sparsity** — ``‖U_k‖₁`` or the transformed ℓ1 ``Σ (a+1)|u| / (a+|u|)``. A zero in ``U_k``
  removes a whole block pattern of ``W``: ``nnz(A ⊗ B) = nnz(A) nnz(B)``.
* **conditioning** — singular values multiply across Kronecker factors, so
  ``κ(W) = Π κ(U_k)``, i.e. ``log κ(W) = Σ_k log κ(U_k)``: penalising each small factor's
  condition number (:func:`log_condition`, or the SVD-free :func:`logdet_condition`) controls
  the big matrix's.

Plain functions on tensors; :class:`~sstorch.structure.constraints.FactorRegularizer` applies
them to a model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CONDITION_SURROGATES",
    "SPARSITY_PENALTIES",
    "l1_penalty",
    "log_condition",
    "logdet_condition",
    "transformed_l1",
]

_TAU = 1e-30  # absolute floor on δ in the normalised frame (max |U| = 1); only matters for U = 0


def l1_penalty(w: Tensor) -> Tensor:
    r"""ℓ1 norm ``Σ |w|`` (a scalar; its subgradient at 0 is 0)."""
    return w.abs().sum()


def transformed_l1(w: Tensor, a: float = 1.0) -> Tensor:
    r"""Transformed ℓ1 ``Σ (a+1)|w| / (a+|w|)``, a > 0.

    Interpolates between ℓ0 (``a → 0``: each nonzero costs ≈ 1) and ℓ1 (``a → ∞``); it is
    bounded by the number of entries and, unlike ℓ1, barely shrinks large weights.
    """
    if not a > 0:
        raise ValueError(f"transformed_l1 needs a > 0, got a={a!r}")
    x = w.abs()
    return ((a + 1) * x / (a + x)).sum()


SPARSITY_PENALTIES: dict[str, Callable[..., Tensor]] = {
    "l1": l1_penalty,
    "tl1": transformed_l1,
}


def _normalised(u: Tensor, eps: float, what: str) -> tuple[Tensor, int, Tensor]:
    """float64 copy of ``u`` scaled (by a detached constant) to ``max |u| = 1`` per matrix.

    Returns ``(û, d, t)`` with ``d = min(m, n)`` and ``t = ‖û‖_F² / d`` = mean of the d squared
    singular values (not detached). The surrogates are scale invariant, so dividing by a
    detached constant changes neither their value nor their gradient, and it keeps the float64
    arithmetic away from overflow and underflow whatever the input's scale.
    """
    if u.dim() < 2 or not u.is_floating_point():
        raise ValueError(f"{what} expects a floating (..., m, n) tensor, got {tuple(u.shape)}")
    if not eps >= 0:
        raise ValueError(f"{what} needs eps >= 0, got eps={eps!r}")
    x = u.to(torch.float64)
    with torch.no_grad():
        scale = x.abs().amax(dim=(-2, -1), keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = x / scale
    d = min(x.shape[-2:])
    return x, d, x.pow(2).sum(dim=(-2, -1)) / d


def log_condition(u: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Smoothed log condition number of a matrix or a stack of matrices.

    .. math::
        \log κ_δ(U) = ½ [\log(σ_{max}² + δ) − \log(σ_{min}² + δ)],
        \qquad δ = ε · \tfrac1d Σ_i σ_i² + τ,

    with ``σ = svdvals(U)``, ``d = min(m, n)`` and ``σ_min = σ_d``. δ scales with ``U`` (τ is
    a 1e-30 floor relative to ``max |U|``, only felt by the zero matrix), so the value is exactly
    scale invariant and finite for rank-deficient and zero matrices; ``eps = 0`` gives
    ``log κ(U)`` itself. δ is *not* detached: the gradient is that of this scale-invariant
    function, hence orthogonal to U (``⟨∇, U⟩ = 0``): it reshapes the spectrum without shrinking
    or growing the factor. Gradients come from ``svdvals`` (``U diag(g) Vᵀ``, no ``1/(σ_i−σ_j)``
    terms), so they stay finite under repeated singular values. Computed in float64.

    Args:
        u: ``(..., m, n)``.
        eps: relative regularisation ε ≥ 0.

    Returns:
        ``(...)``, one value per matrix, in ``u``'s dtype.
    """
    x, _, t = _normalised(u, eps, "log_condition")
    s2 = torch.linalg.svdvals(x).pow(2)
    delta = eps * t + _TAU
    out = 0.5 * (torch.log(s2[..., 0] + delta) - torch.log(s2[..., -1] + delta))
    return out.to(u.dtype)


def logdet_condition(u: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Log-det (AM–GM gap) condition surrogate, smooth and SVD-free.

    With G the d×d Gram matrix of the smaller side (``U Uᵀ`` if m ≤ n else ``Uᵀ U``),
    ``d = min(m, n)`` and eigenvalues ``λ_i = σ_i²``:

    .. math::
        f(U) = d \log(\operatorname{tr} G_δ / d) − \log\det G_δ
             = d \log(\operatorname{mean}_i μ_i) − Σ_i \log μ_i,
        \qquad G_δ = G + δ I, \; μ_i = λ_i + δ,

    with ``δ = (ε + ρ) tr G / d + τ``, where ``ρ = 4 (m+n) d 2⁻⁵²`` (below 1e-9 for factors up
    to 1000) keeps ``G_δ`` numerically positive definite even when ``eps = 0``, and τ is as in
    :func:`log_condition`. ``log det`` comes from a float64 Cholesky factorisation.

    Facts (proved by AM–GM, checked in ``tests/functional/test_penalties.py``), with
    ``κ = √(μ_max / μ_min)`` the regularised condition number:

    * ``f ≥ 0``, and ``f = 0`` iff all ``σ_i`` are equal, i.e. ``κ = 1``;
    * ``2 log cosh(log κ) = log((1 + κ²)² / (4κ²)) ≤ f ≤ 2 (d − 1) log κ`` for ``d ≥ 2``, with
      equality on the left for ``d = 2``. (Lower bound: replace ``μ_max, μ_min`` by two copies
      of their mean; the sum is unchanged and AM–GM on the new list gives it. Upper bound:
      ``log(mean/μ_i) ≤ log(μ_max/μ_min)`` for the ``d − 1`` terms other than ``μ_max``.)
      So ``κ ≤ e^{f/2} + √(e^f − 1) < 2 e^{f/2}``: bounding f bounds κ.

    Unlike ``log κ`` it depends on *all* singular values, and its gradient (for m ≤ n and δ
    held fixed: ``2 (I / mean μ − G_δ⁻¹) U``) is smooth everywhere, with no eigenvector terms.
    As in :func:`log_condition`, δ is not detached, so f is exactly scale invariant and
    ``⟨∇f, U⟩ = 0``; finite for rank-deficient and zero matrices; ``d = 1`` gives 0.

    Args:
        u: ``(..., m, n)``.
        eps: relative regularisation ε ≥ 0.

    Returns:
        ``(...)``, one value per matrix, in ``u``'s dtype.
    """
    x, d, t = _normalised(u, eps, "logdet_condition")
    m, n = x.shape[-2:]
    g = x @ x.transpose(-2, -1) if m <= n else x.transpose(-2, -1) @ x
    rho = 4 * (m + n) * d * torch.finfo(torch.float64).eps
    delta = (eps + rho) * t + _TAU
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    chol, _ = torch.linalg.cholesky_ex(g + delta[..., None, None] * eye)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    out = d * torch.log(t + delta) - logdet
    return out.to(u.dtype)


CONDITION_SURROGATES: dict[str, Callable[..., Tensor]] = {
    "logkappa": log_condition,
    "logdet": logdet_condition,
}
