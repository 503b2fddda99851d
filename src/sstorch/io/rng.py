"""The random number generator states a checkpoint stores: torch (CPU, CUDA), NumPy, Python.

The torch states are tensors (``rng.torch``, ``rng.cuda.<i>``); NumPy's and Python's are JSON,
kept in the ``rng`` entry of the checkpoint's metadata.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["restore_rng_state", "rng_state"]


def rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The JSON part of every RNG state; the torch states are added to ``tensors``."""
    tensors["rng.torch"] = torch.get_rng_state()
    n_cuda = 0
    # Only when CUDA is in use: querying every GPU would create a context on each of them.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
            n_cuda += 1
    np_state = np.random.get_state()
    if isinstance(np_state, tuple):  # ("MT19937", keys, pos, has_gauss, cached_gaussian)
        name, keys, *rest = np_state
        np_state = [name, keys.tolist(), *(np.asarray(v).item() for v in rest)]
    version, internal, gauss = random.getstate()
    return {
        "torch": True,
        "cuda": n_cuda,
        "numpy": np_state,
        "python": [version, list(internal), gauss],
    }


def restore_rng_state(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Set every RNG from the ``rng`` entry ``doc`` and the ``rng.*`` tensors."""
    torch.set_rng_state(tensors["rng.torch"].cpu())
    if torch.cuda.is_available():
        for i in range(min(int(doc.get("cuda", 0)), torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"].cpu(), i)
    np_state = doc["numpy"]
    if isinstance(np_state, list):
        name, keys, *rest = np_state
        np_state = (name, np.asarray(keys, dtype=np.uint32), *rest)
    np.random.set_state(np_state)
    version, internal, gauss = doc["python"]
    random.setstate((version, tuple(internal), gauss))
