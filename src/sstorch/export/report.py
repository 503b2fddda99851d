"""What an export wrote and measured (:class:`ExportReport`, :class:`QuantReport`); errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sstorch.export.sparse import PackReport

__all__ = ["ExportError", "ExportReport", "QuantReport"]


class ExportError(ValueError):
    """Export cannot be done or failed a check; the message says why and what to do."""


@dataclass
class QuantReport:
    """fp32 vs dynamic-int8 onnxruntime models on the same clean and adversarial images."""

    path: str
    bytes: int
    n: int
    clean_acc_fp32: float
    clean_acc_int8: float
    pgd_acc_fp32: float
    pgd_acc_int8: float
    eps: float
    pgd_steps: int
    max_abs_diff_vs_fp32: float  # int8 vs fp32 logits, clean images
    pgd_note: str = ("PGD crafted white-box on the fp32 PyTorch model; the same adversarial "
                     "images classified by the fp32 and int8 onnxruntime models (int8: transfer)")


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured. Element counts are tensor entries."""

    path: str
    format: str
    opset: int
    bytes: int
    n_parity: int
    parity_source: str
    max_abs_diff: float  # max |ORT − PyTorch| over all logits of the parity images
    tolerance: float
    clean_acc: float | None  # onnxruntime fp32 on the parity images (when labelled)
    n_initializers: int
    initializer_elements: int
    max_initializer_elements: int
    max_initializer_name: str
    max_static_elements: int  # initializers, Constants and batch-free intermediates
    max_static_name: str
    largest_model_tensor: int  # the model's largest parameter/buffer: the bound on initializers
    largest_factor_elements: int  # largest separable factor or bias (0 without separable layers)
    dense_kronecker_elements: int  # largest Π m_k n_k: what a materialized W would hold
    params: int
    compression: float
    bytes_dense_fp32: int  # summary(model): parameters stored dense fp32
    bytes_sparse: int  # summary(model): parameters in the sparse packing
    packed: PackReport | None = None
    int8: QuantReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [
            f"wrote {self.path} ({self.bytes:,} bytes, opset {self.opset}, dynamic batch)",
            f"parity: max |onnxruntime − PyTorch| = {self.max_abs_diff:.3g} on {self.n_parity} "
            f"{self.parity_source} (tolerance {self.tolerance:g})"
            + (f"; onnxruntime accuracy {self.clean_acc:.2%}" if self.clean_acc is not None
               else ""),
            f"structure: largest initializer {self.max_initializer_elements:,} elements "
            f"({self.max_initializer_name}), largest static tensor "
            f"{self.max_static_elements:,}" + (
                f"; largest factor/bias {self.largest_factor_elements:,}; a materialized "
                f"Kronecker W would be {self.dense_kronecker_elements:,}"
                if self.dense_kronecker_elements else "; no separable layers"),
            f"model: {self.params:,} parameters ({self.compression:.1f}× compression); "
            f"summary bytes dense fp32 {self.bytes_dense_fp32:,}, sparse {self.bytes_sparse:,}",
        ]
        if self.packed is not None:
            p = self.packed
            out.append(f"sparse pack: {p.path} ({p.file_bytes:,} bytes = parameters "
                       f"{p.param_bytes:,} + buffers {p.buffer_bytes:,} + header "
                       f"{p.header_bytes:,}; {p.n_bitmask} bitmask / {p.n_dense} dense tensors)")
        if self.int8 is not None:
            q = self.int8
            out.append(
                f"int8: {q.path} ({q.bytes:,} bytes); n = {q.n}: clean {q.clean_acc_fp32:.2%} "
                f"fp32 vs {q.clean_acc_int8:.2%} int8; PGD-{q.pgd_steps} (ε = {q.eps:g}) "
                f"{q.pgd_acc_fp32:.2%} fp32 vs {q.pgd_acc_int8:.2%} int8 ({q.pgd_note}); "
                f"max |int8 − fp32| logits {q.max_abs_diff_vs_fp32:.3g}")
        return out
