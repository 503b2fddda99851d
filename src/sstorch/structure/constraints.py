r"""Constraints on the Kronecker factors: sparsity, conditioning, pruning and statistics.

Wei et al. (arXiv 2112.13551) make separable layers both light and robust by regularising the
factors ``U_k`` of ``W = U_1 ⊗ … ⊗ U_K``:

* **sparsity** — ``‖U_k‖₁`` or the transformed ℓ1 ``Σ (a+1)|u| / (a+|u|)``, then magnitude
  pruning with persistent masks. A zero in ``U_k`` removes a whole block pattern of ``W``:
  ``nnz(A ⊗ B) = nnz(A) nnz(B)``.
* **conditioning** — singular values multiply across Kronecker factors, so
  ``‖W‖₂ = Π ‖U_k‖₂`` (the layer's Lipschitz constant) and ``κ(W) = Π κ(U_k)``, i.e.
  ``log κ(W) = Σ_k log κ(U_k)``. Penalising each small factor's condition number controls the
  big matrix's, which bounds how much an input perturbation can be amplified relative to the
  signal.

The training loop calls one object per step::

    reg = FactorRegularizer(model, lambda_sparsity=1e-4, lambda_cond=1e-4)
    loss = criterion(model(x), y) + reg()

and pruning is a schedule of calls with rising targets::

    prune_factors(model, 0.5)   # masks persist in state_dict and survive optimizer steps
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sstorch.functional.kronecker import kron
from sstorch.layers.separable import SeparableLinear, track_masked, untrack_masked

__all__ = [
    "CONDITION_SURROGATES",
    "SPARSITY_PENALTIES",
    "FactorRegularizer",
    "LayerStats",
    "apply_masks_",
    "l1_penalty",
    "layer_stats",
    "log_condition",
    "logdet_condition",
    "prune_factors",
    "remove_masks_",
    "transformed_l1",
]

_NO_LAYERS = "no SeparableLinear found in the model; use sstorch.separate first"
_TAU = 1e-30  # absolute floor on δ in the normalised frame (max |U| = 1); only matters for U = 0


# --------------------------------------------------------------------------- sparsity penalties


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


# --------------------------------------------------------------- condition-number surrogates


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

    Facts (proved by AM–GM, checked in ``tests/test_constraints.py``), with
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


# ------------------------------------------------------------------------------- statistics


def _separable_layers(model: nn.Module) -> list[tuple[str, SeparableLinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SeparableLinear)]


def _kappa(u: Tensor) -> float:
    """Exact ``σ_max / σ_min`` (``σ_min`` the min(m, n)-th); inf if singular or zero."""
    s = torch.linalg.svdvals(u.detach().to(torch.float64))
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def _spectral_norm(u: Tensor) -> float:
    return float(torch.linalg.matrix_norm(u.detach().to(torch.float64), ord=2))


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
        lipschitz = math.prod(_spectral_norm(u[0]) for u in factors)
        nnz_dense = term_nnz[0]
    else:
        kappa = _kappa(layer.to_dense()) if small else math.nan
        lipschitz = sum(
            math.prod(_spectral_norm(u[r]) for u in factors) for r in range(rank)
        )
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
        lipschitz=lipschitz,
        nnz=nnz,
        numel=numel,
        nnz_dense=nnz_dense,
        sparsity=1.0 - nnz / numel,
    )


def layer_stats(model: nn.Module) -> list[LayerStats]:
    """:class:`LayerStats` for every :class:`SeparableLinear` in ``model`` (masks applied)."""
    return [_stats(name, layer) for name, layer in _separable_layers(model)]


# ---------------------------------------------------------------------------------- pruning

_SCOPES = ("factor", "slice")


def _masks(layer: SeparableLinear) -> list[tuple[int, Tensor]]:
    return [
        (k, mask)
        for k in range(layer.n_modes)
        if (mask := getattr(layer, f"mask_{k}", None)) is not None
    ]


def _rezero(layer: SeparableLinear) -> None:
    layer.apply_masks_()


def _track(layer: SeparableLinear) -> None:
    """Keep a pruned layer's zeros real through optimizer steps (hook lives in separable)."""
    track_masked(layer)


def _layers_or_raise(model: nn.Module) -> list[tuple[str, SeparableLinear]]:
    layers = _separable_layers(model)
    if not layers:
        raise ValueError(_NO_LAYERS)
    return layers


def _keep_mask(w: Tensor, old: Tensor | None, sparsity: float, scope: str) -> Tensor:
    """Boolean mask keeping the largest ``|w|`` of a ``(R, m, n)`` factor.

    ``floor(sparsity · size)`` entries are dropped per factor (``scope="factor"``) or per rank
    slice ``U_k[r]`` (``scope="slice"``), already-masked entries first; the largest entry of
    every slice is always kept, and nothing masked is ever revived.
    """
    score = w.abs().to(torch.float32)
    if old is not None:
        score = torch.where(old != 0, score, torch.full_like(score, -1.0))
    rank = w.shape[0]
    flat = score.reshape(rank, -1)
    # Protect each slice's largest entry so that no U_k[r] (hence no term of W) vanishes.
    flat.scatter_(1, flat.argmax(1, keepdim=True), math.inf)
    if scope == "slice":
        size = flat.shape[1]
        n_keep = max(size - math.floor(sparsity * size + 1e-9), 1)
        idx = flat.topk(n_keep, dim=1).indices
        keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    else:
        size = flat.numel()
        n_keep = max(size - math.floor(sparsity * size + 1e-9), rank)
        idx = flat.reshape(-1).topk(n_keep).indices
        keep = torch.zeros(size, dtype=torch.bool, device=w.device).scatter_(0, idx, True)
    keep = keep.reshape(w.shape)
    if old is not None:
        keep &= old != 0
    return keep


@torch.no_grad()
def prune_factors(
    model_or_layer: nn.Module, sparsity: float, scope: str = "factor"
) -> dict[str, float]:
    r"""Magnitude-prune every factor tensor to a target fraction of zeros, with persistent masks.

    For each factor ``U_k (R, m_k, n_k)`` the ``floor(sparsity · R m_k n_k)`` smallest-magnitude
    entries (``scope="factor"``) or the ``floor(sparsity · m_k n_k)`` smallest of each rank
    slice ``U_k[r]`` (``scope="slice"``) are masked. At least one entry per factor *and per
    rank slice* is always kept (the slice's largest), because an all-zero factor makes the whole
    Kronecker term, hence W for R = 1, vanish.

    Masks are buffers ``mask_k`` (same shape, dtype and device as factor k, so they are saved in
    ``state_dict``), the forward multiplies by them, and the parameters are set to exactly 0 at
    masked positions. Existing masks are respected: masked entries stay masked, so pruning is
    monotone and can follow a schedule of rising targets. A global optimizer post-step hook
    (installed on first use) re-zeroes masked parameters after every ``optimizer.step()``, so
    momentum, Adam moments and weight decay cannot revive them.

    Under ``DistributedDataParallel`` prune before wrapping, or on every rank alike (masks
    depend only on the parameters, which DDP keeps identical).

    Args:
        model_or_layer: a model containing :class:`SeparableLinear` layers, or one layer.
        sparsity: target fraction of zeros, ``0 ≤ sparsity < 1``.
        scope: ``"factor"`` or ``"slice"``.

    Returns:
        ``{layer name: fraction of masked factor entries}``.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    result = {}
    for name, layer in _layers_or_raise(model_or_layer):
        masked = total = 0
        for k, u in enumerate(layer.factors):
            old = getattr(layer, f"mask_{k}", None)
            mask = _keep_mask(u, old, float(sparsity), scope).to(u.dtype)
            if old is None:
                layer.register_buffer(f"mask_{k}", mask)
            else:
                old.copy_(mask)
            u.mul_(mask)
            masked += int((mask == 0).sum())
            total += mask.numel()
        _track(layer)
        result[name] = masked / total
    return result


@torch.no_grad()
def apply_masks_(model: nn.Module) -> int:
    """Set masked factor entries to exactly 0 and (re-)arm the post-step hook.

    Call after loading a pruned checkpoint into a fresh model: ``load_state_dict`` recreates
    the masks (so the forward is already right) but cannot register the layer with the hook.

    Returns:
        number of layers that carry masks.
    """
    count = 0
    for _, layer in _separable_layers(model):
        if _masks(layer):
            _rezero(layer)
            _track(layer)
            count += 1
    return count


def remove_masks_(model: nn.Module) -> int:
    """Un-prune: delete the ``mask_k`` buffers (pruned entries stay 0 but may train again).

    Returns:
        number of layers whose masks were removed.
    """
    count = 0
    for _, layer in _separable_layers(model):
        masks = _masks(layer)
        for k, _ in masks:
            delattr(layer, f"mask_{k}")
        untrack_masked(layer)
        count += bool(masks)
    return count


# ------------------------------------------------------------------------------ regularizer


def _choice(table: dict[str, Callable[..., Tensor]], name: str, what: str) -> Callable:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


class FactorRegularizer:
    r"""The paper's factor penalty, called once per training step.

    .. math::
        \mathcal R = λ_s Σ_{layers} Σ_k \mathrm{sparsity}(U_k)
                   + λ_c Σ_{layers} Σ_k Σ_r \mathrm{cond}(U_k[r])

    over the masked factors (:meth:`SeparableLinear.effective_factors`). With
    ``cond="logkappa"`` and R = 1 the inner sum is ``Σ_k log κ(U_k) = log κ(W)`` (when
    ``full_rank``, see :class:`LayerStats`), so the penalty is the log condition number of the
    dense layer at the cost of K small SVDs. ``cond="logdet"`` (default) upper-bounds it up to
    constants (see :func:`logdet_condition`) and is SVD-free.

    Args:
        model: the model (a ``DistributedDataParallel`` wrapper works: its ``modules()`` are
            searched). Layers are collected once, here.
        lambda_sparsity, lambda_cond: weights λ_s, λ_c ≥ 0.
        sparsity: ``"l1"`` or ``"tl1"`` (:data:`SPARSITY_PENALTIES`).
        cond: ``"logdet"`` or ``"logkappa"`` (:data:`CONDITION_SURROGATES`).
        a: parameter of the transformed ℓ1 (> 0).
        eps: relative regularisation of the condition surrogates.

    Example:
        >>> reg = FactorRegularizer(model, lambda_cond=1e-4)
        >>> loss = criterion(model(x), y) + reg()
        >>> reg.last  # {"sparsity": 0.0, "cond": ..., "total": ...}
    """

    def __init__(
        self,
        model: nn.Module,
        lambda_sparsity: float = 0.0,
        lambda_cond: float = 0.0,
        sparsity: str = "l1",
        cond: str = "logdet",
        a: float = 1.0,
        eps: float = 1e-6,
    ) -> None:
        for what, lam in (("lambda_sparsity", lambda_sparsity), ("lambda_cond", lambda_cond)):
            if not lam >= 0:
                raise ValueError(f"{what} must be >= 0, got {lam!r}")
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.sparsity_fn = _choice(SPARSITY_PENALTIES, sparsity, "sparsity penalty")
        self.cond_fn = _choice(CONDITION_SURROGATES, cond, "condition surrogate")
        self.lambda_sparsity = float(lambda_sparsity)
        self.lambda_cond = float(lambda_cond)
        self.sparsity, self.cond, self.a, self.eps = sparsity, cond, a, eps
        self.layers = [layer for _, layer in _separable_layers(model)]
        if not self.layers and (self.lambda_sparsity > 0 or self.lambda_cond > 0):
            raise ValueError(_NO_LAYERS)
        self._zero = next(iter(model.parameters()), torch.zeros(())).new_zeros(())
        self._last: dict[str, Tensor | float] = {"sparsity": 0.0, "cond": 0.0, "total": 0.0}

    @property
    def last(self) -> dict[str, float]:
        """Unweighted sparsity and condition sums and the weighted total of the last call.

        Kept as detached tensors and converted on access, so calling the regularizer never
        forces a device synchronisation. A term whose λ is 0 is not computed and reads 0.0.
        """
        return {k: float(v) for k, v in self._last.items()}

    def _sparsity_term(self, u: Tensor) -> Tensor:
        if self.sparsity == "tl1":
            return self.sparsity_fn(u, self.a)
        return self.sparsity_fn(u)

    def __call__(self) -> Tensor:
        """Return the scalar penalty ``λ_s S + λ_c C`` (differentiable w.r.t. the factors)."""
        if self.lambda_sparsity == 0 and self.lambda_cond == 0:
            self._last = {"sparsity": 0.0, "cond": 0.0, "total": 0.0}
            return self._zero.detach().clone()
        s_total: Tensor | float = 0.0
        c_total: Tensor | float = 0.0
        for layer in self.layers:
            for u in layer.effective_factors():
                if self.lambda_sparsity > 0:
                    s_total = s_total + self._sparsity_term(u)
                if self.lambda_cond > 0:
                    c_total = c_total + self.cond_fn(u, self.eps).sum()
        total = self.lambda_sparsity * s_total + self.lambda_cond * c_total
        self._last = {
            "sparsity": s_total.detach() if isinstance(s_total, Tensor) else s_total,
            "cond": c_total.detach() if isinstance(c_total, Tensor) else c_total,
            "total": total.detach(),
        }
        return total

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(layers={len(self.layers)}, "
            f"lambda_sparsity={self.lambda_sparsity}, lambda_cond={self.lambda_cond}, "
            f"sparsity={self.sparsity!r}, cond={self.cond!r}, a={self.a}, eps={self.eps})"
        )
