"""The JSON side of a checkpoint: nested state ↔ JSON with tensor references, and checksums.

Inside the ``sstorch`` metadata every tensor is replaced by a reference
``{"__tensor__": "<key>"}`` to a tensor stored in the file, tuples by ``{"__tuple__": [...]}``
and dicts with non-string keys by ``{"__items__": [[key, value], ...]}``. :func:`digest` is the
SHA-256 of a tensor's bytes that loading checks. The checkpoint errors live here too, so every
module of the format raises the same :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FORMAT_VERSION", "MAX_LISTED", "META_KEY", "CheckpointCorrupted", "CheckpointError",
    "PathLike", "decode_state", "digest", "encode_state", "one_line", "storable",
]

FORMAT_VERSION = 1
META_KEY = "sstorch"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_DROP = object()  # marks a value left out of a lenient (scheduler) encoding
MAX_LISTED = 5

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message says which file and what to do."""


class CheckpointCorrupted(CheckpointError):
    """The file is truncated, damaged or fails its checksums (not a mismatch with the model).

    ``path`` is the file and ``detail`` what is wrong with it, so a caller can build its own
    advice (``sstorch train`` does: a damaged ``last.safetensors`` cannot be resumed from).
    """

    def __init__(self, message: str, path: PathLike, detail: str):
        super().__init__(message)
        self.path = Path(path)
        self.detail = detail


def encode_state(obj: Any, key: str, tensors: dict[str, Tensor], dropped: list[str] | None) -> Any:
    """JSON-able copy of ``obj`` with tensors moved into ``tensors`` under keys built from ``key``.

    ``dropped is None`` is strict (unsupported values raise); otherwise unsupported values are
    left out (dict entries) or become ``None`` (list items) and their paths are recorded.
    """
    if isinstance(obj, Tensor):
        name, n = key, 1
        while name in tensors:
            name, n = f"{key}#{n}", n + 1
        tensors[name] = obj
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        items = [encode_state(v, f"{key}.{i}", tensors, dropped) for i, v in enumerate(obj)]
        items = [None if v is _DROP else v for v in items]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        pairs = [(k, encode_state(v, f"{key}.{k}", tensors, dropped)) for k, v in obj.items()]
        pairs = [(k, v) for k, v in pairs if v is not _DROP]
        if all(isinstance(k, str) for k, _ in pairs):
            return dict(pairs)
        if all(k is None or isinstance(k, (bool, int, float, str)) for k, _ in pairs):
            return {_ITEMS: [[k, v] for k, v in pairs]}
    if dropped is None:
        raise CheckpointError(
            f"cannot store {key} of type {type(obj).__name__}: checkpoints hold tensors and JSON "
            "values (dict, list, str, int, float, bool, None) only"
        )
    dropped.append(key)
    return _DROP


def decode_state(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and _TENSOR in obj:
        return tensors[obj[_TENSOR]]
    if len(obj) == 1 and _TUPLE in obj:
        return tuple(decode_state(v, tensors) for v in obj[_TUPLE])
    if len(obj) == 1 and _ITEMS in obj:
        return {k: decode_state(v, tensors) for k, v in obj[_ITEMS]}
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, dense, contiguous tensors, none sharing memory (tied weights are cloned)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        t = t.detach()
        if t.layout != torch.strided:
            raise CheckpointError(
                f"cannot store {name}: {t.layout} tensors are not supported; convert it with "
                ".to_dense() before saving"
            )
        if not t.is_contiguous():
            t = t.contiguous()
        ptr = (str(t.device), t.untyped_storage().data_ptr())
        if ptr[1] != 0 and ptr in seen:
            t = t.clone()
            ptr = (str(t.device), t.untyped_storage().data_ptr())
        seen.add(ptr)
        out[name] = t
    return out



def one_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or "no details"
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}"



def digest(t: Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (row-major, as safetensors stores them)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()

