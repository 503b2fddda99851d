r"""Initialise structured layers from dense weights, and swap ``nn.Linear`` layers for them.

* :func:`load_dense_state` — compress-then-fine-tune: every :class:`StructuredLinear` whose
  dense ``name.weight`` is in a **dense** model's ``state_dict`` is set to its best
  approximation of that weight by ``layer.load_dense_`` (the nearest Kronecker sum of a
  :class:`~sstorch.layers.separable.SeparableLinear`, the truncated SVD ``W ≈ A B`` of a
  :class:`~sstorch.layers.lowrank.LowRankLinear`, Tucker HOOI or TT-SVD of a
  :class:`~sstorch.layers.tensorized.TensorizedLinear`), as in Lebedev et al. 2015
  ("Speeding-up Convolutional Neural Networks Using Fine-tuned CP-Decomposition") and Kim et
  al. 2016.
* :func:`factorize_mlp` — replace named ``nn.Linear`` layers by a registered baseline layer
  (:data:`~sstorch.layers.base.LAYERS`: ``lowrank``, ``tucker``, ``tt``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

import sstorch.layers.lowrank  # registers "lowrank" in LAYERS
import sstorch.layers.tensorized  # noqa: F401  (registers "tucker", "tt")
from sstorch.layers.base import LAYERS, StructuredLinear

__all__ = ["BASELINES", "factorize_mlp", "load_dense_state"]

BASELINES = ("lowrank", "tucker", "tt")


def load_dense_state(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, float]:
    r"""Load a **dense** model's ``state_dict`` into ``model`` whose Linears are structured.

    Each :class:`StructuredLinear` named ``name`` whose dense ``name.weight`` ``(M, N)`` is in
    ``state_dict`` gets ``layer.load_dense_(W, b)``, the best approximation
    ``argmin ‖W − Ŵ‖_F`` of its structure; every other entry (normalization, the dense layers
    left) must match ``model`` exactly. Train the result adversarially afterwards.

    Returns:
        ``{layer name: relative Frobenius error ‖W − Ŵ‖_F / ‖W‖_F}``.

    Raises:
        ValueError: a dense weight of the wrong shape, or keys missing from / unknown to
        ``model``.
    """
    state = dict(state_dict)
    errors: dict[str, float] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, StructuredLinear) and f"{name}.weight" in state:
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
    ``tt``; ``lowrank`` takes the flat sizes and the int ``rank``). Biases are kept; the layer is
    built by ``LAYERS[baseline](in_shape, out_shape, rank, bias)``.
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
        new = LAYERS[baseline](in_shape, out_shape, rank, old.bias is not None)
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
    return net
