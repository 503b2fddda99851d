r"""Baselines at a matched parameter budget: low-rank and tensorized layers, and dense pruning.

The separable MLP spends ~6k parameters where the dense 784-1024-1024-10 MLP spends 1.86M.
These are the other ways of spending the same budget that it is compared with (issue 5):

* :class:`LowRankLinear` — ``W = A B`` with ``A (m×r)``, ``B (r×n)``: ``r(m+n)`` parameters
  instead of ``mn`` (Denil et al. 2013, "Predicting Parameters in Deep Learning"; Sainath et al.
  2013, "Low-rank matrix factorization for deep neural network training").
* :class:`TensorizedLinear` — tensorly-torch's ``FactorizedLinear`` (Kossaifi et al., "TensorLy:
  Tensor Learning in Python", JMLR 2019): W is reshaped into the tensor of shape
  ``(m_1, …, m_K, n_1, …, n_K)`` and stored in **Tucker** form
  ``W = G ×1 V_1 ×2 … ×2K V_2K`` (core ``G`` of shape ``(r_1, …, r_2K)``, factors
  ``V_j (d_j × r_j)``; params ``Π r_j + Σ d_j r_j``) or as a **tensor train** / TT-matrix
  (Novikov et al. 2015, "Tensorizing Neural Networks"):
  ``W[(i_1..i_K), (j_1..j_K)] = G_1[i_1, j_1] G_2[i_2, j_2] ⋯ G_K[i_K, j_K]`` with cores
  ``G_k (r_{k-1} × m_k × n_k × r_k)``, ``r_0 = r_K = 1``; params ``Σ r_{k-1} m_k n_k r_k``.
  With K = 2 modes a TT-matrix of rank r is a sum of r Kronecker products
  ``Σ_α G_1[:, :, α] ⊗ G_2[α]``, i.e. exactly a :class:`~sstorch.layers.separable.SeparableLinear`
  of
  Kronecker rank r (without the paper's constraints).
* :func:`prune_linear_` — unstructured magnitude pruning of ``nn.Linear`` weights (Han et al.
  2015, "Learning both Weights and Connections for Efficient Neural Networks") with persistent
  masks, ramped over epochs by :func:`keep_schedule` and fine-tuned with the same adversarial
  training, as in the pruning baselines of Sehwag et al. 2020 ("HYDRA: Pruning Adversarially
  Robust Neural Networks"); :class:`Hydra` is that paper's method: the mask is learned from the
  adversarial loss through importance scores, then the kept weights are fine-tuned.

Masks of pruned Linear layers are ``weight_mask`` buffers (so they are in ``state_dict`` and in
checkpoints); the masked weights are set to exactly 0 and kept there after every optimizer step
by the global post-step hook of :mod:`sstorch.layers.separable`, so momentum and weight decay cannot
revive them. :func:`sync_linear_masks_` recreates the buffers when a pruned checkpoint is loaded
into a freshly built model (``ImageClassifier`` calls it).

tensorly-torch is optional (``pip install -e '.[bench]'``) and imported only when a tensorized
layer is built.
"""

from __future__ import annotations

import contextlib
import math
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.layers.separable import track_masked, untrack_masked

__all__ = [
    "BASELINES",
    "Hydra",
    "LowRankLinear",
    "TensorizedLinear",
    "apply_linear_masks_",
    "factorize_mlp",
    "init_from_dense_",
    "keep_schedule",
    "linear_layers",
    "prune_linear_",
    "remove_linear_masks_",
    "sparse_inference",
    "sync_linear_masks_",
]

BASELINES = ("lowrank", "tucker", "tt")
MASK = "weight_mask"

# Our name → (tltorch's name, tltorch's forward implementation). tltorch's factorized Tucker
# forward is a single unoptimised einsum (2.7 GB for a batch of 128 at rank 6) and its
# "reconstructed" one rebuilds the dense W at every call (12 ms at 784 → 1024), so Tucker layers
# use our own mode-by-mode contraction (``TensorizedLinear._tucker_forward``); the TT-matrix
# contraction of tltorch is cheap (1.5 ms).
_TLTORCH = {"tucker": ("tucker", "reconstructed"), "tt": ("blocktt", "factorized")}


# --------------------------------------------------------------------------------- low rank


class LowRankLinear(nn.Module):
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
        w = _check_dense(self, weight)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[: self.rank].sqrt()
        k = root.numel()
        self.A.zero_()[:, :k] = (u[:, :k] * root).to(self.A)
        self.B.zero_()[:k] = (root[:, None] * vh[:k]).to(self.B)
        _copy_bias(self.bias, bias)
        return _relative_error(w, self.to_dense())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.B), self.A, self.bias)

    def to_dense(self) -> Tensor:
        """The ``(m, n)`` weight ``A B``."""
        return self.A @ self.B

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dense_params(self) -> int:
        """Parameters of the equivalent ``nn.Linear``: ``mn`` (+ bias)."""
        return self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0)

    def macs_per_example(self) -> int:
        return self.rank * (self.in_features + self.out_features)

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


# ------------------------------------------------------------------------------- tensorized


def _import_tltorch() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tltorch
    except ImportError as exc:
        raise ModuleNotFoundError(
            "model.baseline tucker/tt needs tensorly-torch, which is not installed; install the "
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


class TensorizedLinear(nn.Module):
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
        tltorch = _import_tltorch()
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
        w = _check_dense(self, weight)
        ref = next(self.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.layer.weight.init_from_matrix(w.to(ref))
        _copy_bias(self.layer.bias, bias)
        return _relative_error(w, self.to_dense())

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
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0)

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


def _check_dense(layer: LowRankLinear | TensorizedLinear, weight: Tensor) -> Tensor:
    shape = (layer.out_features, layer.in_features)
    if tuple(weight.shape) != shape:
        raise ValueError(f"a dense weight for this {type(layer).__name__} must be {shape}, got "
                         f"{tuple(weight.shape)}")
    return weight.detach().to(torch.float64)


def _copy_bias(own: Tensor | None, bias: Tensor | None) -> None:
    if own is not None and bias is not None:
        own.copy_(bias.reshape(own.shape))


def _relative_error(w: Tensor, approx: Tensor) -> float:
    return float((w - approx.detach().to(w)).norm() / w.norm().clamp_min(1e-30))


def init_from_dense_(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, float]:
    """Load a **dense** model's ``state_dict`` into ``model`` whose Linears are baseline layers.

    Each :class:`LowRankLinear` / :class:`TensorizedLinear` named ``name`` whose ``name.weight``
    (the dense ``(m, n)`` weight) is in ``state_dict`` is initialised by decomposing it
    (:meth:`LowRankLinear.load_dense_`: truncated SVD; :meth:`TensorizedLinear.load_dense_`:
    Tucker HOOI or TT-SVD) — decompose-then-fine-tune, as in Lebedev et al. 2015 ("Speeding-up
    Convolutional Neural Networks Using Fine-tuned CP-Decomposition") and Kim et al. 2016. Every
    other entry must match ``model`` exactly.

    Returns:
        ``{layer name: relative Frobenius error of its decomposition}``.

    Raises:
        ValueError: a weight of the wrong shape, or keys missing from / unknown to ``model``.
    """
    state = dict(state_dict)
    errors: dict[str, float] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, (LowRankLinear, TensorizedLinear)) and f"{name}.weight" in state:
            try:
                errors[name] = layer.load_dense_(state.pop(f"{name}.weight"),
                                                 state.pop(f"{name}.bias", None))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches
        raise ValueError(" ".join(str(exc).split())) from exc
    missing = [k for k in result.missing_keys if not any(k.startswith(f"{n}.") for n in errors)]
    problems = [f"missing {k}" for k in missing] + [
        f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        raise ValueError(f"{len(problems)} keys do not match the model: "
                         f"{'; '.join(problems[:5])}{' …' if len(problems) > 5 else ''}")
    return errors


def factorize_mlp(net: nn.Module, shapes: Mapping[str, tuple[Sequence[int], Sequence[int]]],
                  baseline: str, rank: float) -> nn.Module:
    """Replace the ``nn.Linear`` layers named in ``shapes`` by the ``baseline`` layer, in place.

    ``shapes[name] = (in_shape, out_shape)`` gives each layer's modes (used by ``tucker`` and
    ``tt``; ``lowrank`` takes the flat sizes and the int ``rank``). Biases are kept.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    for name, (in_shape, out_shape) in shapes.items():
        old = net.get_submodule(name)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"{name} is a {type(old).__name__}, not an nn.Linear")
        if (math.prod(in_shape), math.prod(out_shape)) != (old.in_features, old.out_features):
            raise ValueError(f"{name}: shapes {tuple(in_shape)} → {tuple(out_shape)} do not "
                             f"match its {old.in_features} → {old.out_features} features")
        bias = old.bias is not None
        if baseline == "lowrank":
            if rank != int(rank) or rank < 1:
                raise ValueError(f"the lowrank baseline needs an int rank ≥ 1, got {rank!r}")
            new: nn.Module = LowRankLinear(old.in_features, old.out_features, int(rank), bias)
        else:
            new = TensorizedLinear(in_shape, out_shape, baseline, rank, bias)
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
    return net


# ---------------------------------------------------------------------------- dense pruning


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` (the layers that dense pruning acts on)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _rezero(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.mul_(getattr(layer, MASK))


def keep_schedule(total: int, final: int, frac: float) -> int:
    r"""Weights kept at fraction ``frac ∈ [0, 1]`` of the pruning ramp: ``N^{1-f} K^f``.

    A geometric ramp from all ``N`` weights to the final ``K``: every step removes the same
    fraction of the weights still there (a linear ramp in sparsity would remove 99 % of the
    survivors in its last step at 300× compression).
    """
    if not 1 <= final <= total:
        raise ValueError(f"need 1 ≤ final ≤ total, got final={final}, total={total}")
    f = min(max(float(frac), 0.0), 1.0)
    return max(final, min(total, round(math.exp((1 - f) * math.log(total)
                                                   + f * math.log(final)))))


def _allocate(sizes: list[int], keep: int) -> list[int]:
    """Split ``keep`` over layers in proportion to their sizes (largest remainder, ≥ 1 each)."""
    total = sum(sizes)
    quota = [keep * s / total for s in sizes]
    out = [max(1, math.floor(q)) for q in quota]
    order = sorted(range(len(sizes)), key=lambda i: quota[i] - math.floor(quota[i]),
                   reverse=True)
    i = 0
    while sum(out) < keep:
        j = order[i % len(order)]
        if out[j] < sizes[j]:
            out[j] += 1
        i += 1
    while sum(out) > keep:  # only when the ≥ 1 floor overshoots
        j = max(range(len(out)), key=lambda k: out[k])
        out[j] -= 1
    return out


def _top_k(scores: list[Tensor], keep: int, scope: str = "global") -> list[Tensor]:
    """Boolean masks (flat, one per layer) of the ``keep`` largest scores, over all layers
    together (``global``) or the same fraction per layer (``layer``)."""
    sizes = [s.numel() for s in scores]
    if scope == "global":
        flat = torch.cat(scores)
        chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        chosen[flat.topk(keep).indices] = True
        return list(chosen.split(sizes))
    keeps = []
    for s, k in zip(scores, _allocate(sizes, keep), strict=True):
        chosen = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
        chosen[s.topk(k).indices] = True
        keeps.append(chosen)
    return keeps


@torch.no_grad()
def prune_linear_(model: nn.Module, keep: int | None = None, sparsity: float | None = None,
                  scope: str = "global") -> dict[str, int]:
    r"""Magnitude-prune the weights of every ``nn.Linear`` to ``keep`` nonzeros in total.

    Give either ``keep`` (weights kept, all layers together) or ``sparsity`` (fraction of
    zeros, ``keep = N − ⌊sparsity · N⌋`` of the ``N`` Linear weights). Biases are not pruned.

    * ``scope="global"``: keep the ``keep`` largest ``|w|`` over all layers together, so layers
      whose weights matter more keep more of them;
    * ``scope="layer"``: every layer keeps the same fraction (``keep`` split in proportion to the
      layers' sizes, largest remainder).

    Each layer's largest weight is always kept (an all-zero layer disconnects the network), and
    masked weights are never revived, so a schedule of falling ``keep`` is monotone; the result
    has exactly ``keep`` unmasked weights unless fewer were left unmasked before. The masks are
    ``weight_mask`` buffers, the masked weights are set to 0, and the global optimizer post-step
    hook keeps them 0.

    Returns:
        ``{layer name: unmasked weights}``.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    layers = linear_layers(model)
    if not layers:
        raise ValueError("no nn.Linear in the model: nothing to prune")
    sizes = [layer.weight.numel() for _, layer in layers]
    total = sum(sizes)
    if (keep is None) == (sparsity is None):
        raise ValueError("give exactly one of keep and sparsity")
    if sparsity is not None:
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
        keep = total - math.floor(sparsity * total + 1e-9)
    assert keep is not None
    if isinstance(keep, bool) or not isinstance(keep, int) or not len(layers) <= keep <= total:
        raise ValueError(f"keep must be an int in [{len(layers)}, {total}] (one weight per "
                         f"layer at least, all {total} at most), got {keep!r}")
    scores = []
    for _, layer in layers:
        s = layer.weight.detach().abs().float().flatten()
        old = getattr(layer, MASK, None)
        if old is not None:
            s = torch.where(old.flatten() != 0, s, torch.full_like(s, -1.0))
        s[s.argmax()] = math.inf  # every layer keeps its largest weight
        scores.append(s)
    keeps = _top_k(scores, keep, scope)
    result = {}
    for (name, layer), chosen in zip(layers, keeps, strict=True):
        w = layer.weight
        old = getattr(layer, MASK, None)
        mask = chosen.reshape(w.shape)
        if old is not None:
            mask &= old != 0
            old.copy_(mask)
        else:
            layer.register_buffer(MASK, mask.to(w.dtype))
        _rezero(layer)
        track_masked(layer, _rezero)
        result[name] = int(mask.sum())
    return result


@torch.no_grad()
def apply_linear_masks_(model: nn.Module) -> int:
    """Zero the masked weights of every pruned ``nn.Linear`` and (re-)arm the post-step hook.

    Returns:
        number of pruned Linear layers.
    """
    count = 0
    for _, layer in linear_layers(model):
        if getattr(layer, SCORE, None) is not None:  # HYDRA score learning: W stays dense
            _score_mode(layer, True)
        elif getattr(layer, MASK, None) is not None:
            _score_mode(layer, False)
            _rezero(layer)
            track_masked(layer, _rezero)
            count += 1
    return count


def remove_linear_masks_(model: nn.Module) -> int:
    """Un-prune: delete the ``weight_mask`` buffers (the zeros stay but may train again)."""
    count = 0
    for _, layer in linear_layers(model):
        if getattr(layer, MASK, None) is not None:
            delattr(layer, MASK)
            untrack_masked(layer)
            count += 1
    return count


def sync_linear_masks_(model: nn.Module, state_dict: Mapping[str, Any], prefix: str = "") -> int:
    """Before loading ``state_dict``: give every ``nn.Linear`` the mask buffer the state has.

    The checkpoint decides which layers are pruned: a Linear gets a (placeholder) ``weight_mask``
    when the state has ``<name>.weight_mask`` and loses its own when the state has none. Call
    :func:`apply_linear_masks_` after loading (``ImageClassifier`` does both).

    Returns:
        number of Linear layers that will be pruned after loading.
    """
    count = 0
    for name, layer in linear_layers(model):
        for buf in (MASK, SCORE):  # SCORE: a checkpoint taken while HYDRA learns its scores
            key = f"{prefix}{name}.{buf}" if name else f"{prefix}{buf}"
            has = getattr(layer, buf, None) is not None
            if key in state_dict and not has:
                layer.register_buffer(buf, torch.ones_like(layer.weight))
            elif key not in state_dict and has:
                delattr(layer, buf)
                untrack_masked(layer)
                _score_mode(layer, False)
        count += f"{prefix}{name}.{MASK}" in state_dict
    return count


# ------------------------------------------------------------------------------------ HYDRA

SCORE = "weight_score"


def _scored_forward(layer: nn.Linear, x: Tensor) -> Tensor:
    """``x (W ⊙ m)ᵀ + b`` with the straight-through mask ``m + s − s.detach()`` (value m)."""
    s = getattr(layer, SCORE)
    return F.linear(x, layer.weight * (getattr(layer, MASK) + s - s.detach()), layer.bias)


SPARSE_DENSITY = 0.1  # pruned Linear layers at most this dense run sparse (sparse_inference)


def _sparse_forward(self: nn.Linear, x: Tensor) -> Tensor:
    """``y = x Wᵀ + b`` with W held as a CSR matrix (``self._csr_weight``)."""
    flat = x.reshape(-1, x.shape[-1])
    y = (self._csr_weight @ flat.T).T
    if self.bias is not None:
        y = y + self.bias
    return y.reshape(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def sparse_inference(model: nn.Module, max_density: float = SPARSE_DENSITY) -> Iterator[int]:
    """Run every pruned ``nn.Linear`` of ``model`` with at most ``max_density`` nonzero weights
    through a sparse (CSR) matrix product while the block lasts; yields how many layers.

    The layer computes the same ``y = x Wᵀ + b`` (the pruned weights are exactly 0), with
    gradients w.r.t. its input, as attacks need, but not w.r.t. W: for evaluation of frozen
    models only (the weights must not change inside the block). At 300× pruning of the
    784-1024-1024-10 MLP a forward–backward pass is ~10× cheaper on a CPU. Layers that are
    learning HYDRA scores, or have their own forward already, are left alone.
    """
    swapped: list[nn.Linear] = []
    try:
        for _, layer in linear_layers(model):
            mask = getattr(layer, MASK, None)
            if (mask is None or getattr(layer, SCORE, None) is not None
                    or "forward" in vars(layer)):
                continue
            weight = layer.weight.detach()
            if weight.count_nonzero().item() > max_density * weight.numel():
                continue
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
                warnings.simplefilter("ignore")
                layer._csr_weight = weight.to_sparse_csr()
            layer.forward = types.MethodType(_sparse_forward, layer)
            swapped.append(layer)
        yield len(swapped)
    finally:
        for layer in swapped:
            del layer.forward
            del layer._csr_weight


def _score_mode(layer: nn.Module, on: bool) -> None:
    """Route ``layer``'s forward through :func:`_scored_forward` (an instance attribute, so the
    state_dict and the class are untouched) or back to ``nn.Linear.forward``."""
    if on:
        layer.forward = types.MethodType(_scored_forward, layer)
    elif "forward" in vars(layer):
        del layer.forward


class Hydra:
    r"""HYDRA score learning (Sehwag et al. 2020, "HYDRA: Pruning Adversarially Robust Neural
    Networks"): choose the weights to keep by minimising the adversarial loss itself.

    Every ``nn.Linear`` gets an importance score ``s`` per weight (a ``weight_score`` buffer,
    initialised to ``|w|``, so the first mask is the global magnitude mask) and computes
    ``y = x (W ⊙ m)ᵀ + b`` with ``m`` the ``keep`` largest ``|s|`` over all layers together (each
    layer's largest always kept, as in :func:`prune_linear_`). The mask is a step function, so the
    straight-through estimator passes ``∂L/∂m`` to ``s``: ``∂L/∂s = W ⊙ ∂L/∂(W ⊙ m)``. While the
    scores learn, the weights and biases are frozen (the paper's pruning phase); the scores have
    their own SGD (:attr:`optimizer`: the run's momentum and weight decay, its lr set per step),
    and the mask is recomputed after each step. :meth:`finalize` fixes the mask, zeroes the
    pruned weights, drops the scores and unfreezes the model for adversarial fine-tuning.

    The model state carries the scores while they learn, so a run resumes in the middle of the
    score phase (the scores' momentum restarts).
    """

    def __init__(self, model: nn.Module, keep: int, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> None:
        self.model, self.keep = model, int(keep)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.optimizer: torch.optim.Optimizer | None = None
        if self.active:  # resumed in the middle of the score phase
            self._start()

    @property
    def layers(self) -> list[nn.Linear]:
        return [layer for _, layer in linear_layers(self.model)]

    @property
    def active(self) -> bool:
        """True while the scores learn (between :meth:`attach` and :meth:`finalize`)."""
        return any(getattr(layer, SCORE, None) is not None for layer in self.layers)

    @torch.no_grad()
    def attach(self) -> None:
        """Start the score phase: scores ``|w|`` (of the current, possibly pruned, weights)."""
        for layer in self.layers:
            w = layer.weight
            score = w.detach().abs().clone()
            if getattr(layer, MASK, None) is not None:
                score.mul_(getattr(layer, MASK))
            for buf, value in ((SCORE, score), (MASK, torch.ones_like(w))):
                if getattr(layer, buf, None) is None:
                    layer.register_buffer(buf, value)
                else:
                    getattr(layer, buf).copy_(value)
            untrack_masked(layer)  # the dense weights must survive the score phase
            _score_mode(layer, True)
        self._start()
        self.update_masks()

    def _start(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        scores = [getattr(layer, SCORE).requires_grad_(True) for layer in self.layers]
        self.optimizer = torch.optim.SGD(scores, lr=0.0, momentum=self.momentum,
                                         weight_decay=self.weight_decay)

    @torch.no_grad()
    def update_masks(self) -> None:
        """``m`` = the ``keep`` largest ``|s|`` over all layers (each layer's largest kept)."""
        scores = []
        for layer in self.layers:
            s = getattr(layer, SCORE).detach().abs().float().flatten()
            s[s.argmax()] = math.inf
            scores.append(s)
        for layer, chosen in zip(self.layers, _top_k(scores, self.keep), strict=True):
            getattr(layer, MASK).copy_(chosen.reshape(layer.weight.shape))

    @torch.no_grad()
    def finalize(self) -> dict[str, int]:
        """End the score phase: keep the current mask, zero the pruned weights, drop the scores,
        unfreeze every parameter. Returns ``{layer name: weights kept}``."""
        self.update_masks()
        kept = {}
        for name, layer in linear_layers(self.model):
            delattr(layer, SCORE)
            _score_mode(layer, False)
            _rezero(layer)
            track_masked(layer, _rezero)
            kept[name] = int(getattr(layer, MASK).sum())
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.optimizer = None
        return kept
