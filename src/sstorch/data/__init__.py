"""Datasets, train/val/test splits and loaders for the training pipeline.

Every dataset has torchvision's constructor shape ``(root, train, transform, download)`` and
yields ``(image, label)``: ``image`` a float32 tensor of shape ``(C, H, W)`` with values in
``[0, 1]``, ``label`` an ``int``. Nothing here normalizes: ``DATASET_INFO[name].mean`` and
``.std`` are for the model, which normalizes inside itself (attacks see ``[0, 1]`` inputs).

The small datasets are read from their original files into one ``uint8`` tensor
``(N, C, H, W)`` and converted per item (``x = u8 / 255``), so a transform always receives a
float ``(C, H, W)`` tensor. ImageNet is read lazily through ``torchvision.datasets.ImageFolder``;
its transform receives the decoded PIL image and returns the float tensor.

CIFAR batches are pickles: they are read with :class:`RestrictedUnpickler`, which only resolves
the numpy and builtin names the format needs and refuses everything else (``os.system``, ...).

Modules: ``registry`` (``DATASET_INFO``, names, roots), ``base`` (``TensorImageDataset``),
``idx`` (MNIST, Fashion-MNIST), ``cifar``, ``svhn``, ``digits``, ``imagefolder`` (ImageNet),
``transforms``, ``split`` (validation split), ``build`` (``build_datasets``, loaders).
"""

from sstorch.data.base import TensorImageDataset
from sstorch.data.build import DATASETS, build_datasets, get_dataset, make_loader
from sstorch.data.cifar import (
    CIFAR10,
    CIFAR100,
    BadPickleError,
    RestrictedUnpickler,
    restricted_pickle_load,
)
from sstorch.data.digits import Digits
from sstorch.data.idx import MNIST, FashionMNIST, read_idx
from sstorch.data.imagefolder import ImageNet
from sstorch.data.registry import (
    DATASET_INFO,
    DatasetInfo,
    DatasetNotFoundError,
    canonical_name,
    default_root,
)
from sstorch.data.split import split_indices
from sstorch.data.svhn import SVHN
from sstorch.data.transforms import eval_transform, train_transform

__all__ = [
    "CIFAR10", "CIFAR100", "DATASETS", "DATASET_INFO", "MNIST", "SVHN", "BadPickleError",
    "DatasetInfo", "DatasetNotFoundError", "Digits", "FashionMNIST", "ImageNet",
    "RestrictedUnpickler", "TensorImageDataset", "build_datasets", "canonical_name",
    "default_root", "eval_transform",
    "get_dataset", "make_loader", "read_idx", "restricted_pickle_load", "split_indices",
    "train_transform",
]
