r"""The base of every structured replacement for ``nn.Linear``, and the layer registry.

A :class:`StructuredLinear` computes ``y = W x + b`` with ``W (out_features × in_features)``
never stored dense: a Kronecker sum (:class:`~sstorch.layers.separable.SeparableLinear`), a
low-rank product ``A B`` (:class:`~sstorch.layers.lowrank.LowRankLinear`), a Tucker tensor or
a tensor train (:class:`~sstorch.layers.tensorized.TensorizedLinear`). Accounting, export and
surgery read every kind through this one interface instead of ``isinstance`` chains.

:data:`LAYERS` maps a baseline name (``"lowrank"``, ``"tucker"``, ``"tt"``) to a builder
``build(in_shape, out_shape, rank, bias)``; layers join it with :func:`register_layer`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["LAYERS", "StructuredLinear", "register_layer", "structured_layers"]


class StructuredLinear(nn.Module, metaclass=abc.ABCMeta):
    r"""``y = W x + b`` with ``W (out_features × in_features)`` stored in structured form.

    Subclasses set ``kind``, ``in_features`` and ``out_features`` and implement
    :meth:`to_dense`, :meth:`macs_per_example` and :meth:`shape_text`; the parameter, nonzero
    and Lipschitz accounting below is shared.
    """

    kind: ClassVar[str]
    in_features: int
    out_features: int

    @abc.abstractmethod
    def to_dense(self) -> Tensor:
        """The equivalent dense weight ``W (out_features, in_features)``, masks applied."""
        raise NotImplementedError

    @abc.abstractmethod
    def macs_per_example(self) -> int:
        """Multiply-accumulates of one forward pass for one input vector, bias excluded."""
        raise NotImplementedError

    @abc.abstractmethod
    def shape_text(self) -> str:
        """The layer's shape as :class:`~sstorch.structure.summary.LayerSummary` prints it."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        """Stored parameters ``Σ_p numel(p)`` (bias included)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def dense_params(self) -> int:
        """Parameters of the equivalent ``nn.Linear``: ``mn`` (+ ``m`` bias)."""
        return self.in_features * self.out_features + (
            self.out_features if self.bias is not None else 0)

    @property
    def compression(self) -> float:
        """``dense_params / n_params``."""
        return self.dense_params / self.n_params

    def effective_tensors(self) -> list[tuple[Tensor, Tensor]]:
        """``(stored parameter, value used in the forward pass)`` for every parameter.

        The default is ``(p, p)``; a layer with pruning masks returns the masked value.
        """
        return [(p, p) for p in self.parameters()]

    def masks(self) -> list[tuple[int, Tensor]]:
        """``(index, mask)`` of every pruned tensor (none by default)."""
        return []

    def nnz(self) -> int:
        """Nonzero entries of the effective tensors: ``Σ_p nnz(value_p)``."""
        return sum(int(torch.count_nonzero(value)) for _, value in self.effective_tensors())

    def dense_macs_per_example(self) -> int:
        """Multiply-accumulates of the equivalent ``nn.Linear``: ``mn``."""
        return self.in_features * self.out_features

    def to_linear(self) -> nn.Module:
        """The equivalent ``nn.Linear`` (weight :meth:`to_dense`, same bias, same mode)."""
        w = self.to_dense().detach()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.train(self.training)
        return lin

    def lipschitz_bound(self) -> float:
        r"""An upper bound on the layer's L2 Lipschitz constant ``‖W‖₂``.

        The default is ``‖W‖₂`` itself, the largest singular value of :meth:`to_dense` in fp64.
        """
        return float(torch.linalg.matrix_norm(self.to_dense().detach().double(), ord=2))


_L = TypeVar("_L", bound=nn.Module)


def structured_layers(model: nn.Module, cls: type[_L] = StructuredLinear) -> list[tuple[str, _L]]:
    """``(name, module)`` of every module of ``model`` that is an instance of ``cls``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]


LAYERS: dict[str, Callable[..., StructuredLinear]] = {}


def register_layer(name: str) -> Callable[[Callable[..., StructuredLinear]],
                                          Callable[..., StructuredLinear]]:
    """Decorator: register ``build(in_shape, out_shape, rank, bias) -> StructuredLinear``
    under ``name`` in :data:`LAYERS`."""

    def register(build: Callable[..., StructuredLinear]) -> Callable[..., StructuredLinear]:
        if name in LAYERS:
            raise ValueError(f"layer {name!r} is registered already")
        LAYERS[name] = build
        return build

    return register


def check_dense(layer: StructuredLinear, weight: Tensor) -> Tensor:
    """``weight`` as fp64 after checking it is ``(out_features, in_features)``."""
    shape = (layer.out_features, layer.in_features)
    if tuple(weight.shape) != shape:
        raise ValueError(f"a dense weight for this {type(layer).__name__} must be {shape}, got "
                         f"{tuple(weight.shape)}")
    return weight.detach().to(torch.float64)


def copy_bias(own: Tensor | None, bias: Tensor | None) -> None:
    """Copy ``bias`` into ``own`` when both exist."""
    if own is not None and bias is not None:
        own.copy_(bias.reshape(own.shape))


def relative_error(w: Tensor, approx: Tensor) -> float:
    """``‖W − Ŵ‖_F / ‖W‖_F`` (the denominator floored at 1e-30)."""
    return float((w - approx.detach().to(w)).norm() / w.norm().clamp_min(1e-30))

