"""Compression accounting: parameters, nonzeros, multiply-accumulates and bytes of a model.

``summary(model)`` compares the model as it is (separable layers, pruned factors) with its
*dense equivalent* (every :class:`~sstorch.layers.base.StructuredLinear` — ``SeparableLinear``
and the baseline ``LowRankLinear`` / ``TensorizedLinear`` — replaced by the ``nn.Linear`` of the
same map).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from sstorch.layers.base import StructuredLinear
from sstorch.structure.surgery import probe_mode

__all__ = ["LayerSummary", "ModelSummary", "sparse_tensor_bytes", "summary"]

FP32_BYTES = 4


def sparse_tensor_bytes(t: Tensor, value_bytes: int = FP32_BYTES) -> int:
    """Bytes to store ``t`` in sstorch's sparse packing: the cheaper of dense and bitmask.

    Bitmask packing stores one bit per entry (``⌈numel/8⌉`` bytes) plus the nonzero values
    (``nnz · value_bytes``); dense stores ``numel · value_bytes``. Shape metadata is excluded.
    """
    numel = t.numel()
    nnz = int(torch.count_nonzero(t))
    return min(numel * value_bytes, math.ceil(numel / 8) + nnz * value_bytes)


@dataclass
class LayerSummary:
    """One Linear-like layer: ``kind`` is ``"separable"``, ``"linear"``, ``"lowrank"``,
    ``"tucker"`` or ``"tt"``."""

    name: str
    kind: str
    shape: str
    params: int
    nnz: int
    dense_params: int
    macs: int  # per input (per token for token-wise layers when no example input is given)

    @property
    def compression(self) -> float:
        return self.dense_params / max(self.params, 1)


@dataclass
class ModelSummary:
    """Totals for a model and its dense equivalent. All counts include biases."""

    total_params: int
    total_nnz: int
    separable_params: int
    separable_nnz: int
    dense_equivalent_params: int
    fc_params: int
    fc_nnz: int
    fc_dense_params: int
    macs: int
    dense_equivalent_macs: int
    macs_scope: str  # "model" (from an example input) or "fc-only" (per token, no convs)
    bytes_dense_fp32: int  # this model, every tensor stored dense fp32
    bytes_sparse: int  # this model, tensors packed with sparse_tensor_bytes
    bytes_dense_equivalent_fp32: int  # the dense-equivalent model, fp32
    layers: list[LayerSummary] = field(default_factory=list)

    @property
    def compression(self) -> float:
        """Whole model: dense-equivalent parameters / stored parameters."""
        return self.dense_equivalent_params / max(self.total_params, 1)

    @property
    def compression_nnz(self) -> float:
        """Whole model: dense-equivalent parameters / nonzero parameters."""
        return self.dense_equivalent_params / max(self.total_nnz, 1)

    @property
    def fc_compression(self) -> float:
        """FC part (Linear + SeparableLinear) only: dense parameters / stored parameters."""
        return self.fc_dense_params / max(self.fc_params, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(compression=self.compression, compression_nnz=self.compression_nnz,
                 fc_compression=self.fc_compression)
        return d

    def table(self) -> str:
        """Plain-text report: per-layer rows, then totals."""
        rows = [("layer", "kind", "shape", "params", "nnz", "dense", "compr.", "MACs")]
        for layer in self.layers:
            rows.append((layer.name, layer.kind, layer.shape, f"{layer.params:,}",
                         f"{layer.nnz:,}", f"{layer.dense_params:,}",
                         f"{layer.compression:.1f}x", f"{layer.macs:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        mb = 1024 * 1024
        lines += [
            "",
            f"parameters        {self.total_params:,} (nnz {self.total_nnz:,}); "
            f"dense equivalent {self.dense_equivalent_params:,}",
            f"compression       model {self.compression:.1f}x (by nnz "
            f"{self.compression_nnz:.1f}x); FC part {self.fc_compression:.1f}x",
            f"separable layers  {self.separable_params:,} params, {self.separable_nnz:,} nnz",
            f"MACs per input    {self.macs:,} (dense equivalent {self.dense_equivalent_macs:,}; "
            f"scope: {self.macs_scope})",
            f"storage           dense fp32 {self.bytes_dense_fp32 / mb:.3f} MiB, sparse "
            f"{self.bytes_sparse / mb:.3f} MiB, dense-equivalent fp32 "
            f"{self.bytes_dense_equivalent_fp32 / mb:.3f} MiB",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _effective_tensors(model: nn.Module) -> list[Tensor]:
    """Every parameter, with structured layers' tensors replaced by their values in the forward
    pass (:meth:`StructuredLinear.effective_tensors`: masked separable factors) and pruned
    Linear weights (``weight_mask``, :mod:`sstorch.pruning.magnitude`) by their masked
    versions."""
    out: list[Tensor] = []
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, StructuredLinear):
            for p, value in mod.effective_tensors():
                if p is not value:
                    seen.add(id(p))
                    out.append(value.detach())
        elif isinstance(mod, nn.Linear) and getattr(mod, "weight_mask", None) is not None:
            seen.add(id(mod.weight))
            out.append((mod.weight * mod.weight_mask).detach())
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p.detach())
    return out


def _count_macs(model: nn.Module, example_input: Tensor) -> tuple[int, int]:
    """(MACs, dense-equivalent MACs) per input for one forward pass, via forward hooks."""
    counts = [0, 0]
    batch = example_input.shape[0]

    def hook(mod: nn.Module, args, out: Tensor) -> None:
        if isinstance(mod, StructuredLinear):
            n_vec = out.numel() // mod.out_features
            counts[0] += n_vec * mod.macs_per_example()
            counts[1] += n_vec * mod.dense_macs_per_example()
        elif isinstance(mod, nn.Linear):
            macs = out.numel() * mod.in_features
            counts[0] += macs
            counts[1] += macs
        elif isinstance(mod, nn.modules.conv._ConvNd):
            macs = out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            counts[0] += macs
            counts[1] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (StructuredLinear, nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with probe_mode(model):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return counts[0] // batch, counts[1] // batch


def summary(model: nn.Module, example_input: Tensor | None = None) -> ModelSummary:
    """Parameter, nonzero, MAC and storage accounting for ``model``.

    * compression (model) = dense-equivalent parameters / stored parameters, where the dense
      equivalent replaces each ``SeparableLinear`` (and baseline ``LowRankLinear`` /
      ``TensorizedLinear``) by ``nn.Linear(Π n_k, Π m_k)``;
    * FC compression counts ``nn.Linear`` and ``SeparableLinear`` layers only;
    * nnz counts nonzero entries after pruning masks are applied;
    * MACs: with ``example_input`` (a batch), multiply-accumulates per input of one forward
      pass over Linear, SeparableLinear and convolution layers; without it, the Linear-like
      layers only, for one vector per input (``macs_scope = "fc-only"``);
    * bytes: fp32 dense storage of this model, the sparse packing of
      :func:`sparse_tensor_bytes`, and the dense equivalent in fp32.
    """
    layers = _layer_rows(model)
    tensors = _effective_tensors(model)
    total_params = sum(t.numel() for t in tensors)
    total_nnz = sum(int(torch.count_nonzero(t)) for t in tensors)
    structured = [row for row in layers if row.kind != "linear"]
    separable = [row for row in layers if row.kind == "separable"]
    dense_equiv = total_params + sum(row.dense_params - row.params for row in structured)
    if example_input is not None:
        macs, dense_macs = _count_macs(model, example_input)
        scope = "model"
    else:
        macs = sum(layer.macs for layer in layers)
        dense_macs = sum(
            layer.macs if layer.kind == "linear"
            else (model.get_submodule(layer.name) if layer.name else model)
            .dense_macs_per_example()
            for layer in layers
        )
        scope = "fc-only"
    fc_params = sum(layer.params for layer in layers)
    return ModelSummary(
        total_params=total_params,
        total_nnz=total_nnz,
        separable_params=sum(row.params for row in separable),
        separable_nnz=sum(row.nnz for row in separable),
        dense_equivalent_params=dense_equiv,
        fc_params=fc_params,
        fc_nnz=sum(layer.nnz for layer in layers),
        fc_dense_params=sum(layer.dense_params for layer in layers),
        macs=macs,
        dense_equivalent_macs=dense_macs,
        macs_scope=scope,
        bytes_dense_fp32=FP32_BYTES * total_params,
        bytes_sparse=sum(sparse_tensor_bytes(t) for t in tensors),
        bytes_dense_equivalent_fp32=FP32_BYTES * dense_equiv,
        layers=layers,
    )


def _layer_rows(model: nn.Module) -> list[LayerSummary]:
    """One :class:`LayerSummary` per structured layer and per ``nn.Linear``, in module order."""
    layers: list[LayerSummary] = []
    for name, mod in model.named_modules():
        if isinstance(mod, StructuredLinear):
            layers.append(LayerSummary(name, mod.kind, mod.shape_text(), mod.n_params, mod.nnz(),
                                       mod.dense_params, mod.macs_per_example()))
        elif isinstance(mod, nn.Linear):
            params = sum(p.numel() for p in mod.parameters())
            nnz = sum(int(torch.count_nonzero(p)) for p in mod.parameters())
            if getattr(mod, "weight_mask", None) is not None:  # pruned (sstorch.pruning)
                nnz = int(torch.count_nonzero(mod.weight * mod.weight_mask)) + (
                    0 if mod.bias is None else int(torch.count_nonzero(mod.bias)))
            layers.append(LayerSummary(name, "linear", f"{mod.in_features} → {mod.out_features}",
                                       params, nnz, params, mod.in_features * mod.out_features))
    return layers
