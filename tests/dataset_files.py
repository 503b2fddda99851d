"""Tiny dataset files written in each dataset's real on-disk format, for the data tests."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RNG = np.random.default_rng(0)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """IDX: big-endian magic (0x0000 08 ndim), big-endian uint32 dims, raw bytes; gzipped."""
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())



def make_mnist(root: Path, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays



def write_cifar_batch(path: Path, n: int, label_key: bytes, num_classes: int) -> np.ndarray:
    """A CIFAR python batch: dict with bytes keys, b'data' uint8 (N, 3072), labels a list."""
    batch = {
        b"batch_label": b"testing batch",
        b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: RNG.integers(0, num_classes, n).tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch



def make_cifar10(root: Path, n: int = 8) -> tuple[list[dict], dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = [write_cifar_batch(folder / f"data_batch_{i}", n, b"labels", 10) for i in range(1, 6)]
    return train, write_cifar_batch(folder / "test_batch", n, b"labels", 10)



def make_svhn(root: Path, n_train: int = 20, n_test: int = 6) -> dict[str, np.ndarray]:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # SVHN's label for the digit 0
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        arrays[split] = (x, y)
    return arrays



def make_imagenet(root: Path, per_class: int = 3) -> dict[str, np.ndarray]:
    pixels = {}
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (root / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                array = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                path = root / split / wnid / f"{wnid}_{i}.png"
                Image.fromarray(array).save(path)
                pixels[str(path)] = array
    return pixels



def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).to(torch.uint8)



class Exploit:
    """A pickle payload that would run ``touch marker`` if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))

