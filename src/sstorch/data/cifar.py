"""CIFAR-10/100 from the official python-pickle batches, loaded with a restricted unpickler.

A CIFAR batch is a pickle: it is read with :class:`RestrictedUnpickler`, which only resolves
the numpy and builtin names the format needs and refuses everything else (``os.system``, ...).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sstorch.data.base import TensorImageDataset, _Pair
from sstorch.data.registry import DOWNLOAD_FLAG, _find

__all__ = [
    "CIFAR10", "CIFAR100", "BadPickleError", "RestrictedUnpickler", "restricted_pickle_load",
]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names a CIFAR batch needs (numpy arrays, plain data).

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``.
    """

    ALLOWED = frozenset({
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
          for n in ("_reconstruct", "scalar")),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),
        *((m, n) for m in ("builtins", "__builtin__")
          for n in ("bytes", "bytearray", "dict", "list", "tuple", "set", "frozenset", "int",
                    "float", "complex", "str")),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: not allowed in a dataset pickle"
            )
        return super().find_class(module, name)


class BadPickleError(ValueError, pickle.UnpicklingError):
    """A dataset pickle that cannot be loaded; the message names the file and what to do."""


def restricted_pickle_load(path: str | os.PathLike) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (``encoding='bytes'``, as CIFAR's)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding="bytes").load()


def _load_batch_dict(path: Path) -> Any:
    """The unpickled batch, every failure a ``ValueError`` naming the file and the remedy."""
    redo = (f"delete it and download the dataset again (`{DOWNLOAD_FLAG}`, download=True in "
            "Python)")
    try:
        return restricted_pickle_load(path)
    except pickle.UnpicklingError as e:
        if "refusing to load" in str(e):  # RestrictedUnpickler: it asks to run code
            raise BadPickleError(f"{path}: not a CIFAR batch: it asks to run code ({e}), so it "
                                 f"was not loaded; {redo}") from e
        raise BadPickleError(f"{path}: truncated or damaged CIFAR batch ({e}); {redo}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise ValueError(f"{path}: truncated or damaged CIFAR batch ({type(e).__name__}: {e}); "
                         f"{redo}") from e


def _read_cifar_batch(path: Path, label_key: str) -> tuple[Tensor, Tensor]:
    """One CIFAR pickle batch → ``uint8 (N, 3, 32, 32)`` images and ``int64 (N,)`` labels."""
    batch = _load_batch_dict(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: CIFAR batch is a {type(batch).__name__}, expected a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: CIFAR batch lacks 'data' or {label_key!r} (has {list(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: CIFAR data is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(labels)} labels for {len(data)} images")
    images = torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32)
    return images, torch.from_numpy(labels.astype(np.int64))


class CIFAR10(TensorImageDataset):
    """CIFAR-10 from the python pickles ``cifar-10-batches-py/{data_batch_1..5,test_batch}``."""

    name = "cifar10"
    folder = "cifar-10-batches-py"
    label_key = "labels"

    def _files(self, train: bool) -> list[str]:
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        return [f"{self.folder}/{n}" for n in names]

    def _load(self, root: Path, train: bool, download: bool, default: bool) -> _Pair:
        files = self._files(train)
        if download and any(_find(root, f) is None for f in files):
            self._download_files(root, lambda: self._fetch(root), default)
        paths = self._require(root, files, default)
        batches = [_read_cifar_batch(p, self.label_key) for p in paths]
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def _fetch(self, root: Path) -> None:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10
        from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100
        from torchvision.datasets import utils

        source = TorchvisionCIFAR10 if self.name == "cifar10" else TorchvisionCIFAR100
        utils.download_and_extract_archive(
            source.url, str(root), filename=source.filename, md5=source.tgz_md5
        )


class CIFAR100(CIFAR10):
    """CIFAR-100 (fine labels) from the python pickles ``cifar-100-python/{train,test}``."""

    name = "cifar100"
    folder = "cifar-100-python"
    label_key = "fine_labels"

    def _files(self, train: bool) -> list[str]:
        return [f"{self.folder}/{'train' if train else 'test'}"]
