"""sstorch.data.idx: MNIST and Fashion-MNIST from IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_files import (
    SHARED,
    make_mnist,
    write_idx,
)
from sstorch.data import (
    get_dataset,
    read_idx,
)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_round_trip(tmp_path: Path, name: str) -> None:
    arrays = make_mnist(tmp_path)
    for train, prefix, n in ((True, "train", 30), (False, "t10k", 10)):
        ds = get_dataset(name, tmp_path, train=train)
        assert len(ds) == n
        x, y = ds[3]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert ds.images.dtype == torch.uint8
        assert torch.equal(x * 255, torch.from_numpy(arrays[f"{prefix}_images"][3]).float()[None])
        assert [ds[i][1] for i in range(n)] == arrays[f"{prefix}_labels"].tolist()
        assert isinstance(y, int)



def test_idx_reads_uncompressed_files(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    for f in tmp_path.glob("*.gz"):
        f.with_suffix("").write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    assert len(get_dataset("mnist", tmp_path, train=False)) == 10



def test_corrupt_idx_files(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-100]))  # payload shorter than the header says
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*size mismatch"):
        get_dataset("mnist", tmp_path, train=False)
    images.write_bytes(gzip.compress(raw)[:200])  # truncated gzip stream
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz"):
        get_dataset("mnist", tmp_path, train=False)
    write_idx(images, np.zeros((10, 28, 28), np.uint8), 2049)  # label magic on an image file
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*magic"):
        get_dataset("mnist", tmp_path, train=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(images, np.zeros((10, 28, 28), np.uint8), 2051)
    write_idx(labels, np.full(10, 10, np.uint8), 2049)  # label 10 out of range
    with pytest.raises(ValueError, match="labels outside"):
        get_dataset("mnist", tmp_path, train=False)
    with pytest.raises(ValueError, match="magic"):
        read_idx(labels, 2051)



@pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"real MNIST not found in {SHARED / 'mnist'}")
def test_real_mnist_from_the_shared_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSTORCH_DATA", str(SHARED))
    test = get_dataset("mnist", train=False)
    assert len(test) == 10_000 and test.targets[:5].tolist() == [7, 2, 1, 0, 4]
    assert len(get_dataset("mnist", train=True)) == 60_000

