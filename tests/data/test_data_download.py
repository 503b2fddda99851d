"""Download plumbing of the datasets (no network: torchvision's downloader is replaced)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from dataset_files import (
    make_cifar10,
    make_mnist,
)
from sstorch.data import (
    DatasetNotFoundError,
    get_dataset,
)


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

