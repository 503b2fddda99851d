"""Running an exported graph with onnxruntime and checking it against PyTorch (the parity check).

Both run the same images, one batch of 1 (the smallest dynamic batch) then batches of 256;
:func:`check_parity` refuses a graph whose logits differ from PyTorch's by more than the
tolerance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sstorch.export.report import ExportError

__all__ = ["BATCH", "accuracy", "check_parity", "dataset_images", "onnx_session",
           "quiet", "require_onnx", "run_ort", "run_torch"]

BATCH = 256


def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or :class:`ExportError` saying how to get them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): "
                          "pip install 'sstorch[export]'") from exc
    return onnx, onnxruntime


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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
    _, ort = require_onnx()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _chunks(n: int) -> list[slice]:
    """One batch of 1 (the smallest dynamic batch), then batches of 256."""
    return [slice(0, min(n, 1))] + [slice(i, min(i + BATCH, n)) for i in range(1, n, BATCH)]


def run_ort(sess: Any, images: Tensor) -> np.ndarray:
    """Logits of the onnxruntime session ``sess`` on ``images``."""
    return np.concatenate([sess.run(None, {"images": images[s].numpy()})[0]
                           for s in _chunks(len(images))])


@torch.no_grad()
def run_torch(model: nn.Module, images: Tensor) -> np.ndarray:
    """Logits of the PyTorch ``model`` on ``images``, in the same batches as :func:`run_ort`."""
    return np.concatenate([model(images[s]).numpy() for s in _chunks(len(images))])


def accuracy(logits: np.ndarray, labels: Tensor) -> float:
    """Top-1 accuracy of ``logits`` against ``labels``."""
    return float((logits.argmax(1) == labels.numpy()).mean())


def dataset_images(dataset: str, n: int, root: str | os.PathLike | None = None,
                   ) -> tuple[Tensor, Tensor]:
    """The first ``n`` test images ``(n, C, H, W)`` in [0, 1] and labels of ``dataset``."""
    from sstorch.data import eval_transform, get_dataset

    ds = get_dataset(dataset, root, train=False, transform=eval_transform(dataset))
    pairs = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([x for x, _ in pairs]), torch.tensor([int(y) for _, y in pairs])


def check_parity(model: nn.Module, graph: Path, images: Tensor, tolerance: float, source: str,
                 out: Path) -> tuple[np.ndarray, float]:
    """PyTorch's logits and ``max |ORT − PyTorch|`` on ``images``; :class:`ExportError` above
    ``tolerance`` (``source`` names the images and ``out`` the file left unwritten)."""
    logits = run_torch(model, images)
    diff = float(np.abs(run_ort(onnx_session(graph), images) - logits).max())
    if not diff <= tolerance:
        raise ExportError(
            f"parity check failed: max |onnxruntime − PyTorch| = {diff:.3g} > tolerance "
            f"{tolerance:g} on {len(images)} {source}; nothing was written to {out}")
    return logits, diff
