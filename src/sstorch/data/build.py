"""Datasets by name, the ``(train, val, test)`` triple of a training run, and data loaders."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from sstorch.data.base import TensorImageDataset
from sstorch.data.cifar import CIFAR10, CIFAR100
from sstorch.data.digits import Digits
from sstorch.data.idx import MNIST, FashionMNIST
from sstorch.data.imagefolder import ImageNet
from sstorch.data.registry import DATASET_INFO, Transform, canonical_name
from sstorch.data.split import split_indices
from sstorch.data.svhn import SVHN
from sstorch.data.transforms import eval_transform, train_transform

__all__ = ["DATASETS", "build_datasets", "get_dataset", "make_loader"]

DATASETS: dict[str, type[TensorImageDataset] | type[ImageNet]] = {
    "fashion-mnist": FashionMNIST, "mnist": MNIST, "cifar10": CIFAR10, "cifar100": CIFAR100,
    "svhn": SVHN, "imagenet": ImageNet, "digits": Digits,
}


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    transform: Transform | None = None,
    download: bool = False,
) -> TensorImageDataset | ImageNet:
    """The dataset called ``name`` (see ``DATASETS``); unknown names raise ``ValueError``."""
    cls = DATASETS[canonical_name(name)]
    return cls(root, train=train, transform=transform, download=download)


def build_datasets(
    name: str,
    root: str | os.PathLike | None = None,
    val_size: int | float | None = None,
    seed: int = 0,
    augment: bool = True,
    download: bool = False,
) -> tuple[Dataset, Dataset | None, Dataset]:
    """``(train, val, test)`` for ``name``; val is carved from the training files.

    ``val_size``: a count or a fraction (default ``DATASET_INFO[name].val_size``: 5000 for the
    MNISTs, CIFARs and SVHN, 10000 for ImageNet, 10% for digits); ``0`` gives ``val = None``.
    The split depends only on ``seed``. Train gets the augmenting transform, val and test the
    eval transform; val reads the training files through its own dataset view.
    """
    name = canonical_name(name)
    info = DATASET_INFO[name]
    full = get_dataset(name, root, train=True, transform=train_transform(name, augment),
                       download=download)
    test = get_dataset(name, root, train=False, transform=eval_transform(name), download=download)
    train_idx, val_idx = split_indices(len(full), info.val_size if val_size is None else val_size,
                                       seed)
    if len(val_idx) == 0:
        return full, None, test
    val = Subset(full.with_transform(eval_transform(name)), val_idx.tolist())
    return Subset(full, train_idx.tolist()), val, test


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
) -> DataLoader:
    """A ``DataLoader``: shuffled for train (seeded), in order otherwise.

    With ``distributed=True`` (``torch.distributed`` initialized) each rank reads its shard
    through a ``DistributedSampler`` (shuffle = ``train``, seed = ``seed``); call
    ``loader.sampler.set_epoch(epoch)`` every epoch. Its eval shards are padded to equal size.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("distributed=True needs torch.distributed initialized (torchrun)")
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
