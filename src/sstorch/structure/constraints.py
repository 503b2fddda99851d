r"""The paper's factor constraints on a model: sparsity and conditioning penalties in the loss.

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

The penalties themselves are in :mod:`sstorch.functional.penalties`, factor pruning in
:mod:`sstorch.pruning.factor` and the per-layer statistics in :mod:`sstorch.structure.stats`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sstorch.functional.penalties import CONDITION_SURROGATES, SPARSITY_PENALTIES
from sstorch.layers.base import structured_layers
from sstorch.layers.separable import SeparableLinear

__all__ = ["FactorRegularizer"]

_NO_LAYERS = "no SeparableLinear found in the model; use sstorch.separate first"


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
        self.layers = [layer for _, layer in structured_layers(model, SeparableLinear)]
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
