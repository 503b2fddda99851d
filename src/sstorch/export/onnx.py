r"""Deployment: ONNX export that keeps the separable structure, checked against PyTorch.

``sstorch export RUN_DIR|CHECKPOINT --format onnx`` (or :func:`export_onnx`) writes the whole
:class:`~sstorch.models.ImageClassifier` — normalization included, so the graph takes images
in ``[0, 1]`` of shape ``(batch, C, H, W)`` with a dynamic batch axis and returns logits
``(batch, classes)`` — and then:

* **structure**: a separable layer is exported as its mode products
  ``Y = X ×1 U_1 ×2 U_2 … ×K U_K + b`` (K small GEMMs per layer, ``Σ_k m_k n_k`` stored
  weights), never as the materialized ``W = U_1 ⊗ … ⊗ U_K`` (``Π_k m_k n_k``). Checked on the
  written graph of a model with separable layers: no initializer, Constant or statically
  shaped intermediate (one without the batch axis, i.e. computed from weights alone) holds
  more elements than the largest of the model's own tensors, else :class:`ExportError`.
* **parity**: onnxruntime (CPU) and PyTorch run the first ``n_parity`` images of the run's
  test set (one batch of 1, then batches of 256); ``max |ORT − PyTorch|`` over the logits is
  reported and must not exceed ``tolerance`` (1e-4). The file is written under a temporary
  name in the target directory and renamed only after every check passed, so a failure
  leaves nothing (and an existing file untouched) under the requested name.
* **int8** (``quantize=True``): onnxruntime's dynamic quantization (int8 weights per tensor for
  MatMul/Gemm with a constant weight, uint8 activations quantized at run time) into
  ``<stem>.int8.onnx``, with clean and PGD accuracy of fp32 vs int8 on the same images. The
  int8 graph has no gradient, so PGD is crafted white-box on the fp32 PyTorch model and the
  *same* adversarial images are classified by the fp32 and the int8 onnxruntime models
  (int8's number is a transfer attack from its fp32 parent, labelled so in the report).
* **sparse packing** (``pack=True``): the weights in :mod:`sstorch.export.sparse`'s bitmask format
  in ``<stem>.sparse.safetensors``; its parameter payload equals
  ``summary(model).bytes_sparse`` (both are reported).

The report goes to ``<stem>.export.json`` next to the ONNX file.

Supported opsets: 13–20 (the TorchScript exporter's range from the opset that settled
``Unsqueeze``/``Split`` inputs, which onnxruntime's quantizer expects).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sstorch.export.sparse import PackReport, pack_sparse
from sstorch.io.fsutil import atomic_write_text, expand_path, fs_errors, temp_beside
from sstorch.layers.separable import SeparableLinear
from sstorch.structure.summary import summary

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "ExportError", "ExportReport", "QuantReport",
           "dataset_images", "export_onnx", "export_sparse", "main_export", "onnx_session"]

SUPPORTED_OPSETS = range(13, 21)
DEFAULT_OPSET = 17
PARITY_TOL = 1e-4
_BATCH = 256


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


# --------------------------------------------------------------------------- helpers


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                          "pip install 'sstorch[export]'") from exc
    return onnx, onnxruntime


def _check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset!r} is not supported; choose {SUPPORTED_OPSETS.start}–"
                          f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    return opset


def _check_tolerance(tolerance: float) -> float:
    if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance) or tolerance < 0):
        raise ExportError(f"tolerance must be a finite number ≥ 0 (max |onnxruntime − PyTorch| "
                          f"on the logits), got {tolerance!r}; e.g. --tolerance {PARITY_TOL:g}")
    return float(tolerance)


def _check_out(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory; give a file name, e.g. {out}/model.onnx")
    if not out.parent.is_dir():
        raise ExportError(f"output directory {out.parent} does not exist; create it first "
                          f"(mkdir -p {out.parent}) or choose another --out")
    return out


def _sibling(out: Path, suffix: str) -> Path:
    """``model.onnx`` → ``model<suffix>`` in the same directory."""
    return out.with_name(out.stem + suffix)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's tracer/deprecation warnings and the quantizer's root-logger hint."""
    old = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            yield
    finally:
        logging.disable(old)


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession``; ``threads`` sets ``intra_op_num_threads``."""
    _, ort = _require_onnx()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _chunks(n: int) -> list[slice]:
    """One batch of 1 (the smallest dynamic batch), then batches of 256."""
    return [slice(0, min(n, 1))] + [slice(i, min(i + _BATCH, n)) for i in range(1, n, _BATCH)]


def _run_ort(sess: Any, images: Tensor) -> np.ndarray:
    return np.concatenate([sess.run(None, {"images": images[s].numpy()})[0]
                           for s in _chunks(len(images))])


@torch.no_grad()
def _run_torch(model: nn.Module, images: Tensor) -> np.ndarray:
    return np.concatenate([model(images[s]).numpy() for s in _chunks(len(images))])


def _accuracy(logits: np.ndarray, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels.numpy()).mean())


def dataset_images(dataset: str, n: int, root: str | os.PathLike | None = None,
                   ) -> tuple[Tensor, Tensor]:
    """The first ``n`` test images ``(n, C, H, W)`` in [0, 1] and labels of ``dataset``."""
    from sstorch.data import eval_transform, get_dataset

    ds = get_dataset(dataset, root, train=False, transform=eval_transform(dataset))
    pairs = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([x for x, _ in pairs]), torch.tensor([int(y) for _, y in pairs])


def _graph_tensors(model_proto: Any) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
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


def _structure(model: nn.Module) -> tuple[int, int, int]:
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


def _load_target(target: str | os.PathLike | nn.Module, dataset: str | None,
                 data_root: str | os.PathLike | None) -> tuple[nn.Module, dict[str, Any]]:
    """(CPU eval copy of the model, defaults from the run: dataset, root, eps, steps, out)."""
    if isinstance(target, nn.Module):
        model = copy.deepcopy(target).cpu().eval()
        return model, {"dataset": dataset, "root": data_root, "eps": None, "steps": None,
                       "out": None}
    from sstorch.eval.run import load_run

    cfg, model, ckpt, run_dir = load_run(target)
    out = run_dir / "model.onnx" if Path(target).is_dir() else ckpt.with_suffix(".onnx")
    return model.cpu().eval(), {
        "dataset": dataset or cfg.data.name, "root": data_root or cfg.data.root,
        "eps": cfg.attack.eps, "steps": cfg.eval.pgd_steps, "out": out,
    }


# --------------------------------------------------------------------------- export


def export_onnx(
    target: str | os.PathLike | nn.Module,
    out: str | os.PathLike | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    n_parity: int = 1000,
    tolerance: float = PARITY_TOL,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    quantize: bool = False,
    pack: bool = False,
    eps: float | None = None,
    pgd_steps: int | None = None,
) -> ExportReport:
    """Export ``target`` to ONNX at ``out`` after the structure and parity checks (see module).

    Args:
        target: a run directory, a checkpoint (``sstorch.eval.run.load_run``) or a model that
            takes ``[0, 1]`` images. A model needs ``out`` and ``images`` or ``dataset``.
        out: the ONNX file (default: ``RUN_DIR/model.onnx``, or the checkpoint's name with
            ``.onnx``); its directory must exist.
        n_parity: test images for the parity check (and the int8 accuracies).
        images, labels: parity images ``(n, C, H, W)`` in [0, 1] instead of the test set.
        dataset, data_root: where the test images come from (default: the run's config).
        quantize: also write and measure ``<stem>.int8.onnx``.
        pack: also write ``<stem>.sparse.safetensors``.
        eps, pgd_steps: the int8 robustness check (default: the run's ``attack.eps`` and
            ``eval.pgd_steps``; 0.1 and 20 for a bare model).

    Raises:
        ExportError: unsupported opset, missing output directory, missing onnx packages, a
            graph holding a tensor larger than the model's own, or a failed parity check.
        FileNotFoundError: no such run/checkpoint, or a checkpoint without a config.
    """
    _check_opset(opset)
    _check_tolerance(tolerance)
    if out is None and isinstance(target, nn.Module):
        raise ExportError("out is required when exporting a model object")
    if out is not None:
        out = _check_out(out)
    if n_parity < 1:
        raise ExportError(f"n_parity must be at least 1, got {n_parity}")
    if quantize and images is not None and labels is None:
        raise ExportError("quantize=True needs labels for the accuracy check")
    onnx, _ = _require_onnx()
    model, run = _load_target(target, dataset, data_root)
    out = _check_out(out if out is not None else run["out"])
    if images is not None:
        images, source = images[:n_parity].float().cpu(), "given images"
        labels = labels[:n_parity].cpu() if labels is not None else None
    elif run["dataset"] is not None:
        images, labels = dataset_images(run["dataset"], n_parity, run["root"])
        source = f"{run['dataset']} test images"
    else:
        raise ExportError("no parity images: pass images= or dataset= with a model object")
    for p in model.parameters():
        p.requires_grad_(False)

    largest, factor, dense = _structure(model)
    with fs_errors(out), temp_beside(out) as tmp:
        with _quiet():
            torch.onnx.export(
                model, (images[:2],), str(tmp), dynamo=False, opset_version=opset,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        inits, static = _graph_tensors(onnx.load(str(tmp)))
        init_name, init_big = max(inits, key=lambda t: t[1], default=("-", 0))
        big_name, big = max(static, key=lambda t: t[1], default=("-", 0))
        if dense and big > largest:  # the guarantee is about separable layers
            raise ExportError(
                f"the exported graph holds {big_name!r} with {big:,} elements, more than any "
                f"tensor of the model (largest {largest:,}): a weight was materialized from "
                f"its factors (for a separable layer, the Kronecker product W); nothing was "
                f"written to {out}")
        logits = _run_torch(model, images)
        diff = float(np.abs(_run_ort(onnx_session(tmp), images) - logits).max())
        if not diff <= tolerance:
            raise ExportError(
                f"parity check failed: max |onnxruntime − PyTorch| = {diff:.3g} > tolerance "
                f"{tolerance:g} on {len(images)} {source}; nothing was written to {out}")
        os.replace(tmp, out)
    s = summary(model)
    report = ExportReport(
        path=str(out), format="onnx", opset=opset, bytes=out.stat().st_size,
        n_parity=len(images), parity_source=source, max_abs_diff=diff, tolerance=tolerance,
        clean_acc=_accuracy(logits, labels) if labels is not None else None,
        n_initializers=len(inits), initializer_elements=sum(e for _, e in inits),
        max_initializer_elements=init_big, max_initializer_name=init_name,
        max_static_elements=big, max_static_name=big_name,
        largest_model_tensor=largest, largest_factor_elements=factor,
        dense_kronecker_elements=dense, params=s.total_params, compression=s.compression,
        bytes_dense_fp32=s.bytes_dense_fp32, bytes_sparse=s.bytes_sparse,
    )
    if pack:
        report.packed = pack_sparse(model, _sibling(out, ".sparse.safetensors"))
    if quantize:
        report.int8 = _quantize(model, out, images, labels,
                                _first(eps, run["eps"], 0.1), _first(pgd_steps, run["steps"], 20))
    _write_json(_sibling(out, ".export.json"), report.as_dict())
    return report


def _quantize(model: nn.Module, fp32: Path, images: Tensor, labels: Tensor, eps: float,
              steps: int) -> QuantReport:
    """Dynamic int8 quantization of ``fp32`` and the fp32-vs-int8 accuracy check."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sstorch.attacks.registry import make_attack

    dest = _sibling(fp32, ".int8.onnx")
    with fs_errors(dest), temp_beside(dest) as tmp:
        with _quiet():
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
        os.replace(tmp, dest)
    fp, q = onnx_session(fp32), onnx_session(dest)
    clean_fp, clean_q = _run_ort(fp, images), _run_ort(q, images)
    attack = make_attack("pgd", eps, seed=0, steps=steps)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adv = torch.cat([attack(model, images[i:i + _BATCH], labels[i:i + _BATCH])
                         for i in range(0, len(images), _BATCH)])
    return QuantReport(
        path=str(dest), bytes=dest.stat().st_size, n=len(images),
        clean_acc_fp32=_accuracy(clean_fp, labels), clean_acc_int8=_accuracy(clean_q, labels),
        pgd_acc_fp32=_accuracy(_run_ort(fp, adv), labels),
        pgd_acc_int8=_accuracy(_run_ort(q, adv), labels), eps=float(eps), pgd_steps=int(steps),
        max_abs_diff_vs_fp32=float(np.abs(clean_q - clean_fp).max()),
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def export_sparse(target: str | os.PathLike | nn.Module, out: str | os.PathLike | None = None
                  ) -> tuple[PackReport, int]:
    """Pack ``target``'s weights (:func:`sstorch.export.sparse.pack_sparse`).

    Returns ``(report, summary(model).bytes_sparse)``; the two byte counts are equal.
    """
    if out is None and isinstance(target, nn.Module):
        raise ExportError("out is required when packing a model object")
    if out is not None:
        out = _check_out(out)
    model, run = _load_target(target, None, None)
    out = _check_out(out if out is not None else
                     _sibling(run["out"], ".sparse.safetensors"))
    report = pack_sparse(model, out)
    return report, summary(model).bytes_sparse


# --------------------------------------------------------------------------- CLI


def main_export(argv: list[str]) -> int:
    """``sstorch export RUN_DIR|CHECKPOINT [options]``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="sstorch export",
        description="Export a trained run for deployment. onnx: the whole classifier "
        "(normalization included: [0, 1] images in, logits out, dynamic batch), separable "
        "layers as mode products, checked against PyTorch with onnxruntime on real test "
        "images. safetensors-sparse: the weights in sstorch's bitmask packing.")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--format", choices=["onnx", "safetensors-sparse"], default="onnx")
    p.add_argument("--out", default=None,
                   help="output file (default: RUN_DIR/model.onnx or "
                   "RUN_DIR/model.sparse.safetensors); its directory must exist")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {SUPPORTED_OPSETS.start}–{SUPPORTED_OPSETS.stop - 1} "
                   "(default: %(default)s)")
    p.add_argument("--n", type=int, default=1000,
                   help="test images for the parity and int8 checks (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=PARITY_TOL,
                   help="max |onnxruntime − PyTorch| allowed (default: %(default)g)")
    p.add_argument("--quantize", action="store_true",
                   help="also write <stem>.int8.onnx (dynamic int8) and compare accuracies")
    p.add_argument("--pack", action="store_true",
                   help="also write <stem>.sparse.safetensors (bitmask-packed weights)")
    p.add_argument("--eps", type=float, default=None,
                   help="PGD radius for the int8 check (default: the run's attack.eps)")
    p.add_argument("--pgd-steps", type=int, default=None,
                   help="PGD steps for the int8 check (default: the run's eval.pgd_steps)")
    p.add_argument("--data-root", default=None, help="dataset root (default: the run's)")
    args = p.parse_args(argv)
    _check_tolerance(args.tolerance)
    args.target = expand_path(args.target, "RUN_DIR")
    if args.out is not None:
        args.out = expand_path(args.out, "--out")
    if args.data_root is not None:
        args.data_root = expand_path(args.data_root, "--data-root")
    if args.format == "safetensors-sparse":
        report, summary_bytes = export_sparse(args.target, args.out)
        print(f"wrote {report.path} ({report.file_bytes:,} bytes = parameters "
              f"{report.param_bytes:,} + buffers {report.buffer_bytes:,} + header "
              f"{report.header_bytes:,}); summary's sparse bytes {summary_bytes:,}; dense fp32 "
              f"{report.dense_fp32_bytes:,}")
        _write_json(_sibling(Path(report.path), ".export.json"),
                    {"format": "safetensors-sparse", "summary_bytes_sparse": summary_bytes,
                     **report.as_dict()})
        return 0
    report = export_onnx(args.target, args.out, opset=args.opset, n_parity=args.n,
                         tolerance=args.tolerance, data_root=args.data_root,
                         quantize=args.quantize, pack=args.pack, eps=args.eps,
                         pgd_steps=args.pgd_steps)
    print("\n".join(report.lines()))
    return 0
