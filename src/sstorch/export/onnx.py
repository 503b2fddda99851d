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

Modules: :mod:`~sstorch.export.graph` (the exported graph and its structure check),
:mod:`~sstorch.export.parity` (onnxruntime vs PyTorch), :mod:`~sstorch.export.quantize` (int8),
:mod:`~sstorch.export.report` (what was written and measured); this module runs them in order.

Supported opsets: 13–20 (the TorchScript exporter's range from the opset that settled
``Unsqueeze``/``Split`` inputs, which onnxruntime's quantizer expects).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from sstorch.export.graph import check_structure, graph_tensors, model_structure, torch_export
from sstorch.export.parity import (
    accuracy,
    check_parity,
    dataset_images,
    onnx_session,
    require_onnx,
)
from sstorch.export.quantize import quantize_int8
from sstorch.export.report import ExportError, ExportReport, QuantReport
from sstorch.export.sparse import PackReport, pack_sparse
from sstorch.io.fsutil import atomic_write_text, expand_path, fs_errors, temp_beside
from sstorch.structure.summary import summary

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "ExportError", "ExportReport", "QuantReport",
           "dataset_images", "export_onnx", "export_sparse", "main_export", "onnx_session"]

SUPPORTED_OPSETS = range(13, 21)
DEFAULT_OPSET = 17
PARITY_TOL = 1e-4


# --------------------------------------------------------------------------- helpers


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
    out = _check_arguments(target, out, opset, tolerance, n_parity, quantize, images, labels)
    onnx, _ = require_onnx()
    model, run = _load_target(target, dataset, data_root)
    out = _check_out(out if out is not None else run["out"])
    images, labels, source = _parity_images(images, labels, n_parity, run)
    for p in model.parameters():
        p.requires_grad_(False)

    largest, factor, dense = model_structure(model)
    with fs_errors(out), temp_beside(out) as tmp:
        torch_export(model, images, tmp, opset)
        inits, static = graph_tensors(onnx.load(str(tmp)))
        big_name, big = check_structure(static, largest, dense, out)
        logits, diff = check_parity(model, tmp, images, tolerance, source, out)
        os.replace(tmp, out)
    init_name, init_big = max(inits, key=lambda t: t[1], default=("-", 0))
    s = summary(model)
    report = ExportReport(
        path=str(out), format="onnx", opset=opset, bytes=out.stat().st_size,
        n_parity=len(images), parity_source=source, max_abs_diff=diff, tolerance=tolerance,
        clean_acc=accuracy(logits, labels) if labels is not None else None,
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
        report.int8 = quantize_int8(
            model, out, _sibling(out, ".int8.onnx"), images, labels,
            _first(eps, run["eps"], 0.1), _first(pgd_steps, run["steps"], 20))
    _write_json(_sibling(out, ".export.json"), report.as_dict())
    return report


def _check_arguments(target: str | os.PathLike | nn.Module, out: str | os.PathLike | None,
                     opset: int, tolerance: float, n_parity: int, quantize: bool,
                     images: Tensor | None, labels: Tensor | None) -> Path | None:
    """Refuse bad arguments before any work; the checked ``out`` (``None`` if not given)."""
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
    return out


def _parity_images(images: Tensor | None, labels: Tensor | None, n_parity: int,
                   run: dict[str, Any]) -> tuple[Tensor, Tensor | None, str]:
    """``(images, labels, source)``: the first ``n_parity`` given images, else test images."""
    if images is not None:
        labels = labels[:n_parity].cpu() if labels is not None else None
        return images[:n_parity].float().cpu(), labels, "given images"
    if run["dataset"] is not None:
        images, labels = dataset_images(run["dataset"], n_parity, run["root"])
        return images, labels, f"{run['dataset']} test images"
    raise ExportError("no parity images: pass images= or dataset= with a model object")


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
