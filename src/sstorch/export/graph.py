"""The exported graph keeps the mode products: no tensor of it is larger than the model's own.

A separable layer is exported as ``Y = X ×1 U_1 ×2 U_2 … ×K U_K + b``; a graph that holds its
materialized ``W = U_1 ⊗ … ⊗ U_K`` (as an initializer, a Constant or a batch-free intermediate
computed at run time) is refused by :func:`check_structure`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sstorch.export.parity import quiet
from sstorch.export.report import ExportError
from sstorch.layers.separable import SeparableLinear

__all__ = ["check_structure", "graph_tensors", "model_structure", "torch_export"]


def torch_export(model: nn.Module, images: Tensor, path: Path, opset: int) -> None:
    """Export ``model`` to ``path`` (TorchScript exporter): ``images`` in, ``logits`` out, with a
    dynamic batch axis; ``images`` (two of them) trace the graph."""
    with quiet():
        torch.onnx.export(
            model, (images[:2],), str(path), dynamo=False, opset_version=opset,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )


def graph_tensors(model_proto: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(initializers, static tensors)`` of the graph as ``(name, elements)`` lists.

    Static tensors: initializers, Constant nodes, and values whose inferred shape has no
    dynamic dimension. Activations carry the dynamic batch axis, so a static tensor is a weight
    or something computed from weights alone — a Kronecker product built at run time included.
    """
    import onnx

    inits = [(t.name, math.prod(t.dims)) for t in model_proto.graph.initializer]
    static = list(inits)
    for node in model_proto.graph.node:
        if node.op_type == "Constant":
            static += [(node.output[0], math.prod(a.t.dims)) for a in node.attribute
                       if a.name == "value"]
    for v in onnx.shape_inference.infer_shapes(model_proto).graph.value_info:
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            static.append((v.name, math.prod(d.dim_value for d in dims)))
    return inits, static


def model_structure(model: nn.Module) -> tuple[int, int, int]:
    """(largest model tensor, largest separable factor/bias, largest Π m_k n_k)."""
    tensors = [*model.parameters(), *model.buffers()]
    largest = max((t.numel() for t in tensors), default=0)
    factor = dense = 0
    for mod in model.modules():
        if isinstance(mod, SeparableLinear):
            sizes = [u.numel() for u in mod.factors]
            sizes += [mod.bias.numel()] if mod.bias is not None else []
            factor = max(factor, *sizes)
            dense = max(dense, mod.in_features * mod.out_features)
    return largest, factor, dense


def check_structure(static: list[tuple[str, int]], largest: int, dense: int, out: Path,
                    ) -> tuple[str, int]:
    """The largest static tensor ``(name, elements)``; :class:`ExportError` when the model has
    separable layers (``dense > 0``) and it exceeds the model's ``largest`` tensor."""
    big_name, big = max(static, key=lambda t: t[1], default=("-", 0))
    if dense and big > largest:  # the guarantee is about separable layers
        raise ExportError(
            f"the exported graph holds {big_name!r} with {big:,} elements, more than any "
            f"tensor of the model (largest {largest:,}): a weight was materialized from "
            f"its factors (for a separable layer, the Kronecker product W); nothing was "
            f"written to {out}")
    return big_name, big
