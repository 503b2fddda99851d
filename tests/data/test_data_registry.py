"""sstorch.data.registry: names, default roots, $SSTORCH_DATA, the not-found messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_files import (
    make_cifar10,
    make_mnist,
)
from sstorch import data
from sstorch.data import (
    DATASET_INFO,
    DatasetNotFoundError,
    build_datasets,
    get_dataset,
)

FASHION_SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")


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

