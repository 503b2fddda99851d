"""Dynamic int8 quantization of an exported graph, with fp32-vs-int8 clean and PGD accuracy.

The int8 graph has no gradient, so PGD is crafted white-box on the fp32 PyTorch model and the
*same* adversarial images are classified by the fp32 and the int8 onnxruntime models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sstorch.export.parity import BATCH, accuracy, onnx_session, quiet, run_ort
from sstorch.export.report import QuantReport
from sstorch.io.fsutil import fs_errors, temp_beside

__all__ = ["quantize_int8"]


def quantize_int8(model: nn.Module, fp32: Path, dest: Path, images: Tensor, labels: Tensor,
                  eps: float, steps: int) -> QuantReport:
    """Dynamic int8 quantization of ``fp32`` into ``dest`` and the fp32-vs-int8 accuracy check."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sstorch.attacks.registry import make_attack

    with fs_errors(dest), temp_beside(dest) as tmp:
        with quiet():
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)
        os.replace(tmp, dest)
    fp, q = onnx_session(fp32), onnx_session(dest)
    clean_fp, clean_q = run_ort(fp, images), run_ort(q, images)
    attack = make_attack("pgd", eps, seed=0, steps=steps)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adv = torch.cat([attack(model, images[i:i + BATCH], labels[i:i + BATCH])
                         for i in range(0, len(images), BATCH)])
    return QuantReport(
        path=str(dest), bytes=dest.stat().st_size, n=len(images),
        clean_acc_fp32=accuracy(clean_fp, labels), clean_acc_int8=accuracy(clean_q, labels),
        pgd_acc_fp32=accuracy(run_ort(fp, adv), labels),
        pgd_acc_int8=accuracy(run_ort(q, adv), labels), eps=float(eps), pgd_steps=int(steps),
        max_abs_diff_vs_fp32=float(np.abs(clean_q - clean_fp).max()),
    )
