r"""Sparse packing: a compact safetensors file for a (pruned) model's weights.

Each parameter ``t`` (separable factors with their pruning masks applied) is stored in the
cheaper of two encodings, exactly the accounting of
:func:`sstorch.structure.summary.sparse_tensor_bytes`:

* **dense**: ``<name>`` as float32, ``4·numel`` bytes;
* **bitmask**: ``<name>::bits``, the nonzero pattern packed 8 entries per byte (uint8,
  little-endian bit order, ``⌈numel/8⌉`` bytes), and ``<name>::values``, the nonzero entries in
  row-major order (float32, ``4·nnz`` bytes) — chosen when ``⌈numel/8⌉ + 4·nnz < 4·numel``,
  i.e. below about 97 % density.

So the parameter payload of the file is ``Σ_t min(4·numel_t, ⌈numel_t/8⌉ + 4·nnz_t)``, equal
to ``summary(model).bytes_sparse``. Buffers (normalization constants, batch-norm statistics)
are stored dense under ``<name>`` and counted apart (``buffer_bytes``), as is the safetensors
header (JSON with shapes, dtypes, offsets and the encoding of each tensor). Pruning masks are
not stored: a pruned layer's ``mask_k`` is restored as the nonzero pattern of factor ``k``, a
pruned ``nn.Linear``'s ``weight_mask`` (``sstorch.pruning.magnitude``) as that of its weight
(identical to the pruning mask unless a kept entry is exactly 0; the layer computes the same
function either way).

Example::

    prune_factors(model, 0.8)
    report = pack_sparse(model, "model.sparse.safetensors")   # report.param_bytes
    unpack_sparse("model.sparse.safetensors", fresh_model)    # same weights, same masks
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from sstorch.io.fsutil import atomic_write, temp_beside
from sstorch.layers.base import StructuredLinear
from sstorch.structure.summary import sparse_tensor_bytes

__all__ = ["PackReport", "pack_sparse", "packed_state", "temp_beside", "unpack_sparse"]

_BITS, _VALUES = "::bits", "::values"
_META_KEY = "sstorch.sparse"
FORMAT_VERSION = 1


@dataclass
class PackReport:
    """What :func:`pack_sparse` wrote. ``file_bytes = param_bytes + buffer_bytes + header``."""

    path: str
    file_bytes: int
    param_bytes: int  # packed parameters; equals summary(model).bytes_sparse
    buffer_bytes: int  # buffers stored dense (normalization, batch-norm statistics)
    header_bytes: int  # safetensors header: 8-byte length + JSON (shapes, offsets, encodings)
    dense_fp32_bytes: int  # the same parameters stored dense fp32
    n_bitmask: int  # tensors stored as bitmask + values
    n_dense: int  # tensors stored dense

    def as_dict(self) -> dict:
        return asdict(self)


def _pruned_linears(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers that carry a ``weight_mask``
    (``sstorch.pruning.magnitude``)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and isinstance(getattr(m, "weight_mask", None), Tensor)]


def _named_parameters(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    """``({name: effective tensor}, {layer name: pruned modes})``; masks applied to factors
    and to pruned ``nn.Linear`` weights (whose pruned entries are 0 already)."""
    tensors: dict[str, Tensor] = {}
    masked: dict[str, list[int]] = {}
    effective: dict[str, Tensor] = {}
    for lname in _pruned_linears(model):
        layer = model.get_submodule(lname)
        prefix = f"{lname}." if lname else ""
        effective[f"{prefix}weight"] = layer.weight * layer.weight_mask
    for lname, mod in model.named_modules():
        if isinstance(mod, StructuredLinear):
            prefix = f"{lname}." if lname else ""
            names = {id(p): n for n, p in mod.named_parameters()}
            for p, value in mod.effective_tensors():
                effective[f"{prefix}{names[id(p)]}"] = value
            if mod.masks():
                masked[lname] = [k for k, _ in mod.masks()]
    for name, p in model.named_parameters():  # named_parameters skips tied duplicates
        tensors[name] = effective.get(name, p).detach()
    return tensors, masked


def packed_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str], int, int]:
    """``(tensors to write, {name: encoding}, parameter bytes, buffer bytes)`` for ``model``."""
    params, _ = _named_parameters(model)
    out: dict[str, Tensor] = {}
    encoding: dict[str, str] = {}
    param_bytes = 0
    for name, t in params.items():
        t = t.detach().to("cpu", torch.float32).contiguous()
        numel = t.numel()
        size = sparse_tensor_bytes(t)
        if size < 4 * numel:
            nonzero = (t != 0).flatten().numpy()
            bits = np.packbits(nonzero, bitorder="little")
            out[name + _BITS] = torch.from_numpy(bits)
            out[name + _VALUES] = t.flatten()[torch.from_numpy(nonzero)].clone()
            encoding[name] = "bitmask"
        else:
            out[name] = t
            encoding[name] = "dense"
        param_bytes += size
    buffer_bytes = 0
    for name, b in model.named_buffers():
        last = name.rsplit(".", 1)[-1]
        if last.startswith("mask_") or last == "weight_mask":
            continue  # restored from the factors' / the weight's nonzero pattern
        out[name] = b.detach().to("cpu").contiguous()
        encoding[name] = "buffer"
        buffer_bytes += b.numel() * b.element_size()
    return out, encoding, param_bytes, buffer_bytes


def pack_sparse(model: nn.Module, path: str | os.PathLike) -> PackReport:
    """Write ``model``'s weights to ``path`` in the sparse packing; atomic (temp + rename).

    Raises:
        FileNotFoundError: ``path``'s directory does not exist.
        sstorch.io.fsutil.FileSystemError: the file cannot be written (read-only, disk full).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory {path.parent} does not exist; create it "
                                "first")
    tensors, encoding, param_bytes, buffer_bytes = packed_state(model)
    params, masked = _named_parameters(model)
    shapes = {**{k: list(t.shape) for k, t in params.items()},
              **{k: list(b.shape) for k, b in model.named_buffers() if k in encoding}}
    meta = {_META_KEY: json.dumps({"format_version": FORMAT_VERSION, "encoding": encoding,
                                   "shapes": shapes, "masked": masked,
                                   "masked_linear": _pruned_linears(model)})}
    data = save(tensors, metadata=meta)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    file_bytes = path.stat().st_size
    kinds = list(encoding.values())
    return PackReport(str(path), file_bytes, param_bytes, buffer_bytes,
                      file_bytes - param_bytes - buffer_bytes,
                      sum(4 * t.numel() for t in params.values()), kinds.count("bitmask"),
                      kinds.count("dense"))


def unpack_sparse(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`pack_sparse` into ``model`` (same architecture); returns it.

    Pruned layers get their ``mask_k`` buffers back (the factors' nonzero patterns).

    Raises:
        ValueError: ``path`` is not an sstorch sparse file, or it does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(_META_KEY)
        if meta is None:
            raise ValueError(f"{path} is not an sstorch sparse file (no {_META_KEY!r} metadata); "
                             "write it with sstorch.export.sparse.pack_sparse")
        doc = json.loads(meta)
        raw = {k: f.get_tensor(k) for k in f.keys()}
    own = model.state_dict()
    state: dict[str, Tensor] = {}
    for name, enc in doc["encoding"].items():
        if name not in own:
            raise ValueError(f"{path} holds {name!r}, which the model does not have; build the "
                             "model with the config it was packed from")
        shape, dtype = own[name].shape, own[name].dtype
        if list(shape) != doc["shapes"][name]:
            raise ValueError(f"{path} does not fit the model: {name} has shape "
                             f"{tuple(doc['shapes'][name])} in the file and {tuple(shape)} in "
                             "the model; build the model with the config it was packed from")
        if enc == "bitmask":
            numel = math.prod(shape)
            bits = np.unpackbits(raw[name + _BITS].numpy(), count=numel, bitorder="little")
            nonzero = torch.from_numpy(bits.astype(bool))
            t = torch.zeros(numel, dtype=torch.float32)
            t[nonzero] = raw[name + _VALUES]
            state[name] = t.reshape(shape).to(dtype)
        else:
            state[name] = raw[name].reshape(shape).to(dtype)
    for lname, modes in doc["masked"].items():
        prefix = f"{lname}." if lname else ""
        for k in modes:
            state[f"{prefix}mask_{k}"] = (state[f"{prefix}factors.{k}"] != 0).to(
                own[f"{prefix}factors.{k}"].dtype)
    for lname in doc.get("masked_linear", []):  # pruned nn.Linear: mask = nonzero pattern
        prefix = f"{lname}." if lname else ""
        state[f"{prefix}weight_mask"] = (state[f"{prefix}weight"] != 0).to(
            own[f"{prefix}weight"].dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit the model: {str(exc).splitlines()[0]}; build "
                         "the model with the config it was packed from") from exc
    return model
