"""Model surgery: swap the ``nn.Linear`` layers of any PyTorch model for ``SeparableLinear``.

``separate(model, ...)`` replaces the chosen Linear layers in place and picks factor shapes;
``densify(model)`` is the inverse (each separable layer becomes the ``nn.Linear`` holding its
dense equivalent ``W = Σ_r U_1[r] ⊗ … ⊗ U_K[r]``), for side-by-side comparisons.

Shape planning. A Linear ``N → M`` becomes K modes ``(n_1..n_K) → (m_1..m_K)`` with
``Π n_k = N`` and ``Π m_k = M``. A rank-1 separable W has rank ``Π_k min(m_k, n_k)``: pairing a
tall factor with a wide one silently caps it below ``min(M, N)``. The planner therefore picks,
among factorizations that fit the parameter budget, the one with the highest attainable rank,
then the fewest parameters (the most balanced), then spends what is left of the budget on
Kronecker rank R. Where a Linear is fed by a flattened feature map ``(C, H, W)`` (found by
running ``example_input`` through the model), the input modes are that map's non-singleton
dims, so the mode products act on channels and space separately, as the paper prescribes.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from sstorch.layers.base import StructuredLinear, structured_layers
from sstorch.layers.separable import SeparableLinear

__all__ = ["SeparablePlan", "densify", "find_flattened_inputs", "plan_shapes",
           "probe_mode", "separate"]


@dataclass(frozen=True)
class SeparablePlan:
    """Factor shapes and rank chosen for one layer."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    rank: int
    params: int  # factor parameters R Σ m_k n_k (bias excluded)

    @property
    def matrix_rank(self) -> int:
        """Upper bound on rank(W) for R = 1: ``Π_k min(m_k, n_k)``."""
        return math.prod(min(m, n) for m, n in zip(self.out_shape, self.in_shape, strict=True))


@cache
def _divisors(n: int) -> tuple[int, ...]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


@cache
def _ordered_factorizations(n: int, k: int, min_factor: int) -> tuple[tuple[int, ...], ...]:
    """All ordered k-tuples of ints ≥ min_factor whose product is n."""
    if k == 1:
        return ((n,),) if n >= min_factor else ()
    out = []
    for d in _divisors(n):
        if d >= min_factor:
            out.extend((d, *rest) for rest in _ordered_factorizations(n // d, k - 1, min_factor))
    return tuple(out)


def _max_rank(in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Largest useful Kronecker rank: the rearranged tensor's smallest mode, min_k m_k n_k."""
    return min(m * n for m, n in zip(out_shape, in_shape, strict=True))


def plan_shapes(
    in_features: int,
    out_features: int,
    *,
    in_shape: Sequence[int] | None = None,
    max_params: int | None = None,
    rank: int | None = None,
    n_modes: int | None = None,
    max_modes: int = 4,
) -> SeparablePlan:
    """Choose ``(in_shape, out_shape, rank)`` for a separable ``in_features → out_features`` map.

    Args:
        in_shape: fixed input modes (e.g. a feature map ``(512, 7, 7)``); otherwise chosen.
        max_params: budget for the factors ``R Σ m_k n_k``; None means rank-1, K = 2 (the
            paper's two-factor layer) unless ``n_modes`` or ``in_shape`` says otherwise.
        rank: fixed Kronecker rank; None fills the budget (1 without a budget).
        n_modes: fixed K; None tries K = 2, 3, … up to ``max_modes`` and keeps the first that
            fits the budget.

    Order of preference: highest attainable rank ``Π min(m_k, n_k)``, then fewest parameters.
    Raises ValueError when no factorization fits.
    """
    if in_features < 1 or out_features < 1:
        raise ValueError(f"features must be positive, got {in_features} → {out_features}")
    if max_params is not None and max_params < 1:
        raise ValueError(f"max_params must be ≥ 1, got {max_params}")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be ≥ 1, got {rank}")
    if in_shape is not None:
        in_shape = tuple(int(s) for s in in_shape)
        if math.prod(in_shape) != in_features:
            raise ValueError(
                f"in_shape {in_shape} has {math.prod(in_shape)} elements, expected {in_features}"
            )
        k_candidates: Iterable[int] = [len(in_shape)]
    elif n_modes is not None:
        k_candidates = [n_modes]
    else:
        k_candidates = range(2, max_modes + 1) if max_params is not None else [2]

    best_seen = None
    for k in k_candidates:
        if in_shape is not None:
            ins_options: Iterable[tuple[int, ...]] = [in_shape]
        else:
            # Input modes of a flat vector are an arbitrary reshape: sorted order loses nothing.
            ins_options = sorted({tuple(sorted(f, reverse=True))
                                  for f in _ordered_factorizations(in_features, k, 2)})
        candidates = []
        for ins in ins_options:
            for outs in _ordered_factorizations(out_features, k, 1):
                p1 = sum(m * n for m, n in zip(outs, ins, strict=True))
                mrank = math.prod(min(m, n) for m, n in zip(outs, ins, strict=True))
                candidates.append((-mrank, p1, ins, outs))
        if not candidates:
            continue
        candidates.sort()
        for _, p1, ins, outs in candidates:
            r = rank if rank is not None else 1
            if max_params is not None:
                if rank is None:
                    r = max(1, min(max_params // p1, _max_rank(ins, outs)))
                if r * p1 > max_params:
                    best_seen = min(best_seen or p1 * r, p1 * r)
                    continue
            return SeparablePlan(ins, outs, r, r * p1)
    if best_seen is None:
        raise ValueError(
            f"cannot factorize {in_features} → {out_features} into {list(k_candidates)} modes "
            "with input factors ≥ 2; pass shapes= explicitly or exclude this layer"
        )
    raise ValueError(
        f"no factorization of {in_features} → {out_features} fits max_params={max_params} "
        f"(smallest found: {best_seen}); lower the compression or raise max_modes"
    )


class _FlattenTracker(TorchFunctionMode):
    """Records tensors produced by flattening a ``(B, *feature_map)`` tensor to ``(B, F)``."""

    _funcs = frozenset({torch.flatten, Tensor.flatten, Tensor.view, Tensor.reshape,
                        torch.reshape})

    def __init__(self) -> None:
        super().__init__()
        self.sources: dict[int, tuple[Tensor, tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self._funcs and args and isinstance(args[0], Tensor) and isinstance(
            out, Tensor
        ):
            src = args[0]
            if src.dim() >= 3 and out.dim() == 2 and out.shape[0] == src.shape[0]:
                self.sources[id(out)] = (out, tuple(src.shape[1:]))
        return out


@contextmanager
def probe_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad for a probing forward pass; every module's own mode is restored."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes.items():
            m.training = training


def find_flattened_inputs(model: nn.Module, example_input: Tensor) -> dict[str, tuple[int, ...]]:
    """Names of ``nn.Linear`` layers fed by a flattened feature map, with that map's shape.

    Runs one forward pass (no grad, eval mode; every module's mode is restored) recording every
    ``flatten``/``view``/``reshape`` of a ``(B, C, H, W…)`` tensor to ``(B, F)``.
    """
    tracker = _FlattenTracker()
    found: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(m, args, name=name):
                rec = tracker.sources.get(id(args[0]))
                if rec is not None and rec[0] is args[0]:
                    found[name] = rec[1]
            handles.append(mod.register_forward_pre_hook(hook))
    try:  # eval mode: no batch-norm updates, no dropout hiding the flatten
        with probe_mode(model), tracker:
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return found


def _match(names: Sequence[str], patterns: Sequence[str], what: str) -> set[str]:
    chosen: set[str] = set()
    for pat in patterns:
        hit = {n for n in names if fnmatch.fnmatchcase(n, pat)}
        if not hit:
            shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
            raise ValueError(
                f"{what} pattern {pat!r} matches no nn.Linear module; the model's Linear "
                f"modules are: {shown or '(none)'}"
            )
        chosen |= hit
    return chosen


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


_OPAQUE_LINEARS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.MultiheadAttention: ("out_proj",),
    nn.TransformerEncoderLayer: ("linear1", "linear2"),
    nn.TransformerDecoderLayer: ("linear1", "linear2"),
}

ShapeSpec = tuple[Sequence[int], Sequence[int]] | tuple[Sequence[int], Sequence[int], int]


def separate(
    model: nn.Module,
    include: str | Sequence[str] = "*",
    exclude: str | Sequence[str] = (),
    *,
    compression: float | None = None,
    max_params: int | None = None,
    shapes: Mapping[str, ShapeSpec] | None = None,
    rank: int | None = None,
    n_modes: int | None = None,
    init: str = "random",
    example_input: Tensor | None = None,
) -> nn.Module:
    """Replace the chosen ``nn.Linear`` modules of ``model`` by ``SeparableLinear`` (in place).

    Args:
        include, exclude: glob patterns on qualified module names (``"classifier.*"``,
            ``"*.mlp.fc1"``); a pattern matching no Linear is an error, not a silent no-op.
        compression: target ``dense_params / separable_params`` per layer (bias included).
        max_params: per-layer parameter budget instead of ``compression``.
        shapes: ``{name: (in_shape, out_shape[, rank])}`` overriding the planner per layer.
        rank: fixed Kronecker rank for planned layers (default: fill the budget, else 1).
        n_modes: fixed number of modes K for planned layers.
        init: ``"random"`` (variance-matched fresh init) or ``"from_dense"`` (nearest Kronecker
            approximation of the current weights, see ``SeparableLinear.from_linear``; each
            layer's relative error is in ``layer.approx_error``).
        example_input: a batch for one forward pass that finds Linears fed by a flattened
            ``(C, H, W)`` map, whose modes then become the separable layer's input modes.

    Replaced layers use ``flatten=True``: they take and return the same flat tensors as the
    Linear they replace, so the model's forward is untouched.
    Returns the model.
    """
    _check_budget(init, compression, max_params)
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = list(linears)
    chosen = _match(names, include, "include") - _match(names, exclude, "exclude")
    shapes = dict(shapes or {})
    unknown = set(shapes) - set(names)
    if unknown:
        raise ValueError(f"shapes names {sorted(unknown)} are not nn.Linear modules of the "
                         f"model; choose from {names[:20]}")
    feature_maps = find_flattened_inputs(model, example_input) if example_input is not None else {}

    unselected = set(shapes) - chosen
    if unselected:
        raise ValueError(f"shapes given for {sorted(unselected)}, which include/exclude do not "
                         "select; add them to include or drop them from shapes")
    # Some torch modules read their Linears' .weight directly (fused fast paths); those
    # Linears cannot be swapped. timm's ViT blocks and plain nn.Linear users are fine.
    mha_owned = _opaque_linear_names(model)
    replacements: list[tuple[str, nn.Module]] = []  # plan everything first: all or nothing
    for name in [n for n in names if n in chosen]:
        lin = linears[name]
        if name in mha_owned:
            kinds = ", ".join(k.__name__ for k in _OPAQUE_LINEARS)
            msg = (f"{name} belongs to a torch module ({kinds}) whose forward reads its weight "
                   "directly; it cannot be made separable")
            if name in include:
                raise ValueError(msg)
            warnings.warn(f"sstorch.separate: skipping {msg}", stacklevel=2)
            continue
        planned = _plan_layer(name, lin, shapes.get(name), feature_maps.get(name), include,
                              compression=compression, max_params=max_params, rank=rank,
                              n_modes=n_modes)
        if planned is None:
            continue
        new = _build_layer(name, lin, *planned, init=init)
        new.train(lin.training)
        replacements.append((name, new))
    for name, new in replacements:
        _set_submodule(model, name, new)
    return model


def _check_budget(init: str, compression: float | None, max_params: int | None) -> None:
    """``ValueError`` for an unknown ``init`` or a bad or doubly given layer budget."""
    if init not in ("random", "from_dense"):
        raise ValueError(f"init must be 'random' or 'from_dense', got {init!r}")
    if compression is not None and max_params is not None:
        raise ValueError("give compression or max_params, not both")
    if compression is not None and not (math.isfinite(compression) and compression >= 1):
        raise ValueError(f"compression must be a finite number ≥ 1 (a ratio dense/separable), "
                         f"got {compression}")


def _opaque_linear_names(model: nn.Module) -> set[str]:
    """Names of the Linears owned by torch modules whose forward reads their weight directly."""
    return {f"{n}.{child}" if n else child for n, m in model.named_modules()
            for kind, children in _OPAQUE_LINEARS.items() if isinstance(m, kind)
            for child in children}


def _plan_layer(name: str, lin: nn.Linear, spec: ShapeSpec | None,
                fmap: tuple[int, ...] | None, include: Sequence[str], *,
                compression: float | None, max_params: int | None, rank: int | None,
                n_modes: int | None) -> tuple[tuple[int, ...], tuple[int, ...], int] | None:
    """``(in_shape, out_shape, rank)`` for one Linear: the user's ``spec``, else the planner's
    (at the budget ``(mn + m) / compression − m`` or ``max_params``). ``None``: a layer matched
    by a wildcard that cannot be planned is skipped with a warning."""
    if spec is not None:
        return tuple(spec[0]), tuple(spec[1]), int(spec[2]) if len(spec) > 2 else (rank or 1)
    fixed = tuple(d for d in fmap if d > 1) if fmap is not None else None
    if fixed is not None and len(fixed) < 2:
        fixed = None  # e.g. a (512, 1, 1) map: a single mode, factorize freely
    budget = max_params
    if compression is not None:
        n_bias = lin.out_features if lin.bias is not None else 0
        budget = int((lin.weight.numel() + n_bias) / compression) - n_bias
        if budget < 1:
            raise ValueError(f"compression {compression} leaves no parameters for "
                             f"{name} ({lin.in_features} → {lin.out_features})")
    try:
        plan = plan_shapes(lin.in_features, lin.out_features, in_shape=fixed,
                           max_params=budget, rank=rank, n_modes=n_modes)
    except ValueError as exc:
        if name not in include:  # matched by a wildcard: skip it, loudly
            warnings.warn(f"sstorch.separate: skipping {name}: {exc}", stacklevel=3)
            return None
        raise
    return plan.in_shape, plan.out_shape, plan.rank


def _build_layer(name: str, lin: nn.Linear, in_shape: Sequence[int], out_shape: Sequence[int],
                 r: int, *, init: str) -> SeparableLinear:
    """The ``SeparableLinear`` replacing ``lin``: fresh (``init="random"``) or the nearest
    Kronecker sum of its weight (``init="from_dense"``)."""
    if init == "from_dense":
        return SeparableLinear.from_linear(lin, in_shape, out_shape, rank=r, flatten=True)
    if math.prod(in_shape) != lin.in_features or math.prod(out_shape) != lin.out_features:
        raise ValueError(
            f"shapes for {name}: {tuple(in_shape)} → {tuple(out_shape)} do not match "
            f"the Linear's {lin.in_features} → {lin.out_features}"
        )
    return SeparableLinear(in_shape, out_shape, bias=lin.bias is not None, rank=r,
                           flatten=True, device=lin.weight.device, dtype=lin.weight.dtype)


def densify(model: nn.Module) -> nn.Module:
    """Inverse of :func:`separate`: every :class:`StructuredLinear` becomes its dense equivalent.

    A flat layer becomes a plain ``nn.Linear(N, M)`` with ``weight = to_dense()``; a
    shape-preserving ``SeparableLinear`` becomes ``Flatten → Linear → Unflatten``
    (``layer.to_linear()``). Pruning masks are applied. Works in place and returns the model (a
    bare structured layer returns its replacement).
    """
    if isinstance(model, StructuredLinear):
        return model.to_linear()
    for name, layer in structured_layers(model):
        _set_submodule(model, name, layer.to_linear())
    return model
