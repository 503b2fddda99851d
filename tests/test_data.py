"""Tests for sstorch.data on tiny files written in each dataset's real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from sstorch import data
from sstorch.data import (
    DATASET_INFO,
    DatasetNotFoundError,
    build_datasets,
    eval_transform,
    get_dataset,
    make_loader,
    read_idx,
    split_indices,
    train_transform,
)

RNG = np.random.default_rng(0)
FASHION_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")


# --- writers of the real formats -------------------------------------------------------------


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


# --- formats, shapes, values -------------------------------------------------------------------


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


def test_cifar10_round_trip(tmp_path: Path) -> None:
    train_batches, test_batch = make_cifar10(tmp_path)
    first = tmp_path / "cifar-10-batches-py" / "data_batch_1"  # numpy 1.x names, as the originals
    first.write_bytes(first.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    assert b"cnumpy.core.multiarray\n_reconstruct" in first.read_bytes()
    train = get_dataset("cifar10", tmp_path, train=True)
    test = get_dataset("cifar10", tmp_path, train=False)
    assert (len(train), len(test)) == (40, 8)
    x, y = train[8 + 2]  # second batch, third image
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    row = train_batches[1][b"data"][2]
    assert torch.equal(as_uint8(x), torch.from_numpy(row).reshape(3, 32, 32))
    assert torch.equal(x * 255, torch.from_numpy(row).reshape(3, 32, 32).float())
    assert y == train_batches[1][b"labels"][2]
    assert [test[i][1] for i in range(8)] == test_batch[b"labels"]


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = write_cifar_batch(folder / "train", 12, b"fine_labels", 100)
    write_cifar_batch(folder / "test", 4, b"fine_labels", 100)
    ds = get_dataset("cifar100", tmp_path, train=True)
    assert len(ds) == 12 and len(get_dataset("cifar100", tmp_path, train=False)) == 4
    assert [ds[i][1] for i in range(12)] == train[b"fine_labels"]
    assert torch.equal(as_uint8(ds[5][0]).flatten(), torch.from_numpy(train[b"data"][5]))
    assert DATASET_INFO["cifar100"].num_classes == 100


def test_svhn_round_trip_and_label_10_is_0(tmp_path: Path) -> None:
    arrays = make_svhn(tmp_path)
    train = get_dataset("svhn", tmp_path, train=True)
    assert (len(train), len(get_dataset("svhn", tmp_path, train=False))) == (20, 6)
    x_raw, y_raw = arrays["train"]
    expected = np.where(y_raw[:, 0] == 10, 0, y_raw[:, 0]).tolist()
    assert [train[i][1] for i in range(20)] == expected
    assert train[0][1] == 0
    x, _ = train[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x * 255, torch.from_numpy(x_raw[:, :, :, 4]).permute(2, 0, 1).float())


def test_imagenet_folder(tmp_path: Path) -> None:
    pixels = make_imagenet(tmp_path)
    raw = get_dataset("imagenet", tmp_path, train=False)  # no transform: native size
    assert len(raw) == 6 and raw.classes == ["n01440764", "n01443537"]
    x, y = raw[4]
    path = raw.folder.samples[4][0]
    assert y == 1 and x.dtype == torch.float32 and x.shape == (3, 20, 30)
    assert torch.equal(x * 255, torch.from_numpy(pixels[path]).permute(2, 0, 1).float())
    train, val, test = build_datasets("imagenet", tmp_path, val_size=2)
    assert (len(train), len(val), len(test)) == (4, 2, 6)
    for ds in (train, val, test):
        x, y = ds[0]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y in (0, 1)
        assert 0.0 <= x.min() and x.max() <= 1.0


def test_digits_bundled() -> None:
    train, val, test = build_datasets("digits", val_size=0.1)
    assert (len(train) + len(val), len(test)) == (1437, 360)
    assert len(val) == round(0.1 * 1437)
    x, y = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    assert 0.0 <= x.min() and x.max() <= 1.0
    full = get_dataset("digits", train=True)
    assert sorted(set(full.targets.tolist())) == list(range(10))
    assert full.images.max() == 16 and torch.equal(full[0][0] * 16, full.images[0].float())
    assert torch.equal(get_dataset("digits", train=False).images, test.images)  # fixed split


@pytest.mark.skipif(
    not (FASHION_SYSTEM_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="system Fashion-MNIST absent (sudo apt-get install dataset-fashion-mnist)",
)
def test_system_fashion_mnist() -> None:
    assert data.default_root("fashion-mnist") == FASHION_SYSTEM_ROOT
    train, val, test = build_datasets("fashion-mnist")
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert sorted(set(test.targets.tolist())) == list(range(10))
    assert DATASET_INFO[data.canonical_name("FashionMNIST")].num_classes == 10
    x, _ = train[0]
    assert x.shape == (1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0


# --- augmentation and splits -------------------------------------------------------------------


def test_augmentation_changes_train_only(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    torch.manual_seed(0)
    train, val, test = build_datasets("cifar10", tmp_path, val_size=10, augment=True)
    raw = get_dataset("cifar10", tmp_path, train=True)
    raw_test = get_dataset("cifar10", tmp_path, train=False)
    changed = [not torch.equal(train[i][0], raw[int(train.indices[i])][0]) for i in range(30)]
    assert sum(changed) >= 20
    assert all(torch.equal(val[i][0], raw[int(val.indices[i])][0]) for i in range(10))
    assert all(torch.equal(test[i][0], raw_test[i][0]) for i in range(8))
    assert val.dataset is not train.dataset and val.dataset.transform is None
    assert val.dataset.images is train.dataset.images  # shared storage, own transform
    plain, _, _ = build_datasets("cifar10", tmp_path, val_size=10, augment=False)
    assert all(torch.equal(plain[i][0], raw[int(plain.indices[i])][0]) for i in range(30))


def test_transforms_per_dataset() -> None:
    def kinds(t: object) -> list[str]:
        inner = getattr(t, "transforms", [t])
        return [type(s).__name__ for s in inner]

    assert kinds(train_transform("cifar10")) == ["RandomCrop", "RandomHorizontalFlip"]
    assert kinds(train_transform("svhn")) == ["RandomCrop"]
    assert train_transform("svhn").padding == [4, 4, 4, 4]
    assert "RandomResizedCrop" in kinds(train_transform("imagenet"))
    assert kinds(eval_transform("imagenet"))[:2] == ["Resize", "CenterCrop"]
    for name in ("mnist", "fashion-mnist", "digits", "cifar100", "svhn"):
        assert eval_transform(name) is None
    for name in ("mnist", "fashion-mnist", "digits"):
        assert train_transform(name) is None
    assert train_transform("cifar10", augment=False) is None


def test_val_split_deterministic_and_disjoint(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=50)
    t1, v1, _ = build_datasets("mnist", tmp_path, val_size=10, seed=3)
    t2, v2, _ = build_datasets("mnist", tmp_path, val_size=10, seed=3)
    _, v3, _ = build_datasets("mnist", tmp_path, val_size=10, seed=4)
    assert v1.indices == v2.indices and t1.indices == t2.indices and v1.indices != v3.indices
    assert len(v1) == 10 and len(t1) == 40
    assert set(t1.indices).isdisjoint(v1.indices)
    assert sorted(t1.indices + v1.indices) == list(range(50))
    _, vf, _ = build_datasets("mnist", tmp_path, val_size=0.2)
    assert len(vf) == 10
    full, none, _ = build_datasets("mnist", tmp_path, val_size=0)
    assert none is None and len(full) == 50


def test_val_size_count_or_fraction() -> None:
    assert len(split_indices(50, 0.2)[1]) == 10
    assert len(split_indices(50, 10.0)[1]) == 10  # a config file's float count
    assert len(split_indices(50, 0.0)[1]) == 0


@pytest.mark.parametrize("bad", [50, 60, -1, 2.5, -0.1, True, "10", None])
def test_bad_val_size(bad: object) -> None:
    with pytest.raises(ValueError, match="val_size"):
        split_indices(50, bad)  # type: ignore[arg-type]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn"])
def test_missing_data_message(tmp_path: Path, name: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset(name, root)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(root) in message and "--set data.download=true" in message
    if name == "fashion-mnist":
        assert "sudo apt-get install dataset-fashion-mnist" in message


def test_missing_default_root_lists_system_and_cache(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    info = DATASET_INFO["fashion-mnist"]
    patched = data.DatasetInfo(
        info.num_classes, info.image_shape, info.mean, info.std, tmp_path / "cache",
        info.download_hint, system_roots=(tmp_path / "system",),
    )
    monkeypatch.setitem(DATASET_INFO, "fashion-mnist", patched)
    with pytest.raises(DatasetNotFoundError) as info_:
        get_dataset("fashion-mnist")
    assert str(tmp_path / "system") in str(info_.value)
    assert str(tmp_path / "cache") in str(info_.value)
    make_mnist(tmp_path / "system")
    assert data.default_root("fashion-mnist") == tmp_path / "system"
    assert len(get_dataset("fashion_mnist", train=False)) == 10


def test_missing_imagenet_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("imagenet", tmp_path / "in1k")
    message = str(info.value)
    assert str(tmp_path / "in1k" / "train") in message
    assert "image-net.org" in message and "--set data.root=PATH" in message
    assert "root/train/<wnid>/" in message and "root/val/<wnid>/" in message


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'") as info:
        build_datasets("cifar11")
    for name in DATASET_INFO:
        assert name in str(info.value)


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


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_refused(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"
    payload = {b"data": _Exploit(marker), b"fine_labels": [0]}
    (folder / "train").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        get_dataset("cifar100", tmp_path, train=True)
    assert not marker.exists()
    (folder / "train").write_bytes(pickle.dumps(print, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match=r"(__builtin__|builtins)\.print"):
        data.restricted_pickle_load(folder / "train")


def test_cifar_batch_wrong_content(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}))
    with pytest.raises(ValueError, match="lacks"):
        get_dataset("cifar100", tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}
    (folder / "train").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="3072"):
        get_dataset("cifar100", tmp_path)


# --- download plumbing (no network: torchvision's downloader is replaced) ----------------------


def test_download_uses_torchvision_sources(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    from torchvision.datasets import CIFAR10, FashionMNIST, utils

    fixtures = tmp_path / "fixtures"
    make_mnist(fixtures)
    urls = []

    def fake_download_url(url: str, root: str, filename: str, md5: str) -> None:
        urls.append(url)
        (Path(root) / filename).write_bytes((fixtures / filename).read_bytes())

    monkeypatch.setattr(utils, "download_url", fake_download_url)
    ds = get_dataset("fashion-mnist", tmp_path / "root", train=True, download=True)
    assert len(ds) == 30
    assert urls == [FashionMNIST.mirrors[0] + f for f, _ in FashionMNIST.resources]

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    def fake_extract(url: str, root: str, filename: str, md5: str) -> None:
        urls.append(url)
        make_cifar10(Path(root))

    monkeypatch.setattr(utils, "download_and_extract_archive", fake_extract)
    assert len(get_dataset("cifar10", tmp_path / "c10", train=False, download=True)) == 8
    assert urls[-1] == CIFAR10.url

    monkeypatch.setattr(utils, "download_url", offline)
    with pytest.raises(DatasetNotFoundError, match="no network") as info:
        get_dataset("svhn", tmp_path / "svhn", download=True)
    assert str(tmp_path / "svhn") in str(info.value)


# --- loaders -----------------------------------------------------------------------------------


def test_make_loader(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=40)
    train, val, _ = build_datasets("mnist", tmp_path, val_size=8)
    loader = make_loader(train, batch_size=8, train=True, seed=1)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.int64
    order = [b[1].tolist() for b in make_loader(train, 8, train=True, seed=1)]
    assert order == [b[1].tolist() for b in make_loader(train, 8, train=True, seed=1)]
    assert order != [b[1].tolist() for b in make_loader(train, 8, train=True, seed=2)]
    in_order = torch.cat([b[1] for b in make_loader(val, 3, train=False)])
    assert in_order.tolist() == [val[i][1] for i in range(len(val))]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            make_loader(train, bad, train=True)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="torch\\.distributed"):
        make_loader(train, 8, train=True, distributed=True)


def test_make_loader_distributed(tmp_path: Path) -> None:
    import torch.distributed as dist

    make_mnist(tmp_path, n_train=20)
    ds = get_dataset("mnist", tmp_path)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        loader = make_loader(ds, 4, train=True, seed=5, distributed=True)
        assert isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.shuffle and loader.sampler.seed == 5
        assert sum(len(b[1]) for b in loader) == 20
        assert not make_loader(ds, 4, train=False, distributed=True).sampler.shuffle
    finally:
        dist.destroy_process_group()


def test_sstorch_data_env_is_searched_before_the_cache(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """``$SSTORCH_DATA`` names a folder of datasets in their official layouts: CIFAR's
    ``cifar-10-batches-py/`` directly under it, the IDX files under ``<name>/``."""
    info = DATASET_INFO["cifar10"]
    monkeypatch.setitem(DATASET_INFO, "cifar10", data.DatasetInfo(
        info.num_classes, info.image_shape, info.mean, info.std, tmp_path / "cache",
        info.download_hint))
    monkeypatch.setenv("SSTORCH_DATA", str(tmp_path / "shared"))
    with pytest.raises(DatasetNotFoundError) as err:  # nothing there yet: every place named
        get_dataset("cifar10", train=False)
    for place in (tmp_path / "shared", tmp_path / "shared" / "cifar10", tmp_path / "cache"):
        assert str(place) in str(err.value)
    make_cifar10(tmp_path / "shared")
    make_mnist(tmp_path / "shared" / "mnist")
    assert data.default_root("cifar10") == tmp_path / "shared"
    assert data.default_root("mnist") == tmp_path / "shared" / "mnist"
    assert len(get_dataset("cifar10", train=False)) == 8
    monkeypatch.delenv("SSTORCH_DATA")
    assert data.default_root("cifar10") == tmp_path / "cache"


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py" / "test_batch").is_file(),
                    reason=f"real CIFAR-10 not found in {SHARED} (only on the project's machines)")
def test_real_cifar10_from_the_shared_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official python-pickle files read unchanged: sizes, label order, channel means."""
    monkeypatch.setenv("SSTORCH_DATA", str(SHARED))
    test = get_dataset("cifar10", train=False)
    assert len(test) == 10_000 and test.images.shape == (10_000, 3, 32, 32)
    assert test.targets[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # cat ship ship plane …
    train = get_dataset("cifar10", train=True)
    assert len(train) == 50_000 and torch.bincount(train.targets).tolist() == [5000] * 10
    mean = train.images.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(DATASET_INFO["cifar10"].mean), atol=1e-3)


@pytest.mark.skipif(not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason=f"real MNIST not found in {SHARED / 'mnist'}")
def test_real_mnist_from_the_shared_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSTORCH_DATA", str(SHARED))
    test = get_dataset("mnist", train=False)
    assert len(test) == 10_000 and test.targets[:5].tolist() == [7, 2, 1, 0, 4]
    assert len(get_dataset("mnist", train=True)) == 60_000


@pytest.mark.parametrize("damage", ["malicious", "truncated"])
def test_bad_cifar_batch_is_a_one_line_cli_error_naming_the_file(tmp_path, capsys, monkeypatch,
                                                                  damage):
    """A refused (code-running) pickle or an interrupted download: `sstorch train` names the
    file and says how to get it again, in one line, without a traceback."""
    from sstorch.cli import main

    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "test", 4, b"fine_labels", 100)
    bad = folder / "train"
    if damage == "malicious":
        marker = tmp_path / "pwned"
        bad.write_bytes(pickle.dumps({b"data": _Exploit(marker), b"fine_labels": [0]}))
    else:
        write_cifar_batch(bad, 12, b"fine_labels", 100)
        bad.write_bytes(bad.read_bytes()[:-200])  # cut like an interrupted download
    code = main(["train", "--set", "data.name=cifar100", f"data.root={tmp_path}",
                 f"out_dir={tmp_path / 'runs'}", "epochs=1", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"sstorch train: error: {bad}: ")
    assert "data.download=true" in err
    assert ("asks to run code" if damage == "malicious" else "truncated or damaged") in err
    if damage == "malicious":
        assert not marker.exists()
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started
