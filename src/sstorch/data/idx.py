"""MNIST and Fashion-MNIST from their IDX files (``.gz`` or raw)."""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

from sstorch.data.base import TensorImageDataset, _Pair
from sstorch.data.registry import _find

__all__ = ["MNIST", "FashionMNIST", "read_idx"]


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike, magic: int | None = None) -> Tensor:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes into a ``uint8`` tensor.

    Layout: a big-endian header ``0x00 0x00 0x08 ndim`` (2049 for 1-d labels, 2051 for 3-d
    images), ``ndim`` big-endian ``uint32`` sizes, then ``Π sizes`` bytes. A wrong ``magic``,
    a short or long payload, or a broken gzip stream raises ``ValueError`` naming the file.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file ({e}); the file is corrupt") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    (found,) = struct.unpack(">i", raw[:4])
    zero, dtype, ndim = found >> 16, (found >> 8) & 0xFF, found & 0xFF
    if (magic is not None and found != magic) or zero != 0 or dtype != 0x08:
        want = magic if magic is not None else "0x0000 08 <ndim>"
        raise ValueError(f"{path}: bad IDX magic number {found} (expected {want})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says {shape} = {expected} bytes, "
            f"file holds {len(raw) - header}"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


class MNIST(TensorImageDataset):
    """MNIST digits from the four IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``."""

    name = "mnist"

    def _torchvision_class(self) -> type:
        from torchvision.datasets import MNIST as TorchvisionMNIST

        return TorchvisionMNIST

    def _load(self, root: Path, train: bool, download: bool, default: bool) -> _Pair:
        prefix = "train" if train else "t10k"
        files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
        if download and any(_find(root, f) is None for f in files):
            self._download_files(root, lambda: self._fetch(root), default)
        image_path, label_path = self._require(root, files, default)
        images, labels = read_idx(image_path, 2051), read_idx(label_path, 2049)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{image_path}, {label_path}: shapes {tuple(images.shape)} and "
                f"{tuple(labels.shape)} do not match (N, H, W) images with (N,) labels"
            )
        return images.unsqueeze(1), labels.long()

    def _fetch(self, root: Path) -> None:
        """torchvision's mirrors and checksums, saved as the ``.gz`` files into ``root``."""
        from torchvision.datasets import utils

        source = self._torchvision_class()
        for filename, md5 in source.resources:
            if _find(root, filename) is not None:
                continue
            errors = []
            for mirror in source.mirrors:
                try:
                    utils.download_url(mirror + filename, str(root), filename, md5)
                    break
                except (OSError, RuntimeError) as e:
                    errors.append(f"{mirror}: {e}")
            else:
                raise RuntimeError(f"cannot download {filename}: " + "; ".join(errors))


class FashionMNIST(MNIST):
    """Fashion-MNIST, same IDX files as MNIST (Debian: ``dataset-fashion-mnist``)."""

    name = "fashion-mnist"

    def _torchvision_class(self) -> type:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        return TorchvisionFashionMNIST
