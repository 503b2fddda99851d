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
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

__all__ = [
    "CIFAR10", "CIFAR100", "DATASETS", "DATASET_INFO", "MNIST", "SVHN", "BadPickleError",
    "DatasetInfo", "DatasetNotFoundError", "Digits", "FashionMNIST", "ImageNet",
    "RestrictedUnpickler", "TensorImageDataset", "build_datasets", "canonical_name",
    "default_root", "eval_transform",
    "get_dataset", "make_loader", "read_idx", "restricted_pickle_load", "split_indices",
    "train_transform",
]

Transform = Callable[[Any], Tensor]
_Pair = tuple[Tensor, Tensor]

DOWNLOAD_FLAG = "--set data.download=true"
ROOT_FLAG = "--set data.root=PATH"
CACHE_DIR = Path("~/.cache/sstorch").expanduser()


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says where and how to get them."""


@dataclass(frozen=True)
class DatasetInfo:
    """Constants of one dataset: what the model needs (classes, shape, mean/std) and where to look.

    ``mean``/``std`` are per-channel statistics of the training images in ``[0, 1]``, for a
    normalization layer inside the model. ``system_roots`` are checked before ``default_root``.
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_root: Path
    download_hint: str
    system_roots: tuple[Path, ...] = ()
    val_size: int | float = 5000


_DOWNLOAD_HINT = (
    f"download it with `{DOWNLOAD_FLAG}` (download=True in Python), "
    f"or point `{ROOT_FLAG}` at a copy"
)


DATASET_INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        10, (1, 28, 28), (0.2860,), (0.3530,), CACHE_DIR / "fashion-mnist",
        "install it with `sudo apt-get install dataset-fashion-mnist`, or "
        + _DOWNLOAD_HINT,
        system_roots=(Path("/usr/share/datasets/fashion-mnist"),),
    ),
    "mnist": DatasetInfo(
        10, (1, 28, 28), (0.1307,), (0.3081,), CACHE_DIR / "mnist", _DOWNLOAD_HINT,
    ),
    "cifar10": DatasetInfo(
        10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        CACHE_DIR / "cifar10", _DOWNLOAD_HINT,
    ),
    "cifar100": DatasetInfo(
        100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        CACHE_DIR / "cifar100", _DOWNLOAD_HINT,
    ),
    "svhn": DatasetInfo(
        10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        CACHE_DIR / "svhn", _DOWNLOAD_HINT,
    ),
    "imagenet": DatasetInfo(
        1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        CACHE_DIR / "imagenet",
        "ImageNet cannot be downloaded automatically: download ILSVRC2012 manually from "
        "https://image-net.org, lay it out as root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG, "
        f"and set the root with `{ROOT_FLAG}`",
        val_size=10000,
    ),
    "digits": DatasetInfo(
        10, (1, 8, 8), (0.3053,), (0.3760,), CACHE_DIR / "digits",
        "digits ships with scikit-learn: `pip install scikit-learn`", val_size=0.1,
    ),
}


def canonical_name(name: str) -> str:
    """The ``DATASET_INFO`` key for ``name`` (``FashionMNIST`` → ``fashion-mnist``)."""
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}.get(
        key, key
    )
    if key not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}; choices: {', '.join(sorted(DATASET_INFO))}")
    return key


DATA_ENV = "SSTORCH_DATA"


def _env_roots(name: str) -> tuple[Path, ...]:
    """``$SSTORCH_DATA`` and ``$SSTORCH_DATA/<name>`` when the variable is set: a folder holding
    datasets in their official layouts (``cifar-10-batches-py/``, ``mnist/*.gz``), searched
    before the system roots and the cache, so sweeps find shared data without a config change."""
    base = os.environ.get(DATA_ENV, "").strip()
    if not base:
        return ()
    base_path = Path(os.path.expandvars(base)).expanduser()
    return (base_path, base_path / name)


def default_root(name: str) -> Path:
    """The root used when none is given: the first of ``$SSTORCH_DATA`` (:func:`_env_roots`)
    and the system roots that holds the data, else the cache."""
    name = canonical_name(name)
    files = _DATASET_FILES.get(name, [])
    for candidate in (*_env_roots(name), *DATASET_INFO[name].system_roots):
        if files and all(_find(candidate, f) is not None for f in files):
            return candidate
    return DATASET_INFO[name].default_root


def _looked_in(name: str, root: str | os.PathLike | None) -> list[Path]:
    info = DATASET_INFO[name]
    return ([Path(root)] if root is not None
            else [*_env_roots(name), *info.system_roots, info.default_root])


def _not_found(name: str, missing: list[Path], looked: list[Path]) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    files = "\n  ".join(str(p) for p in missing)
    return DatasetNotFoundError(
        f"{name}: data not found (looked in {where}); missing:\n  {files}\n"
        f"To get it: {DATASET_INFO[name].download_hint}."
    )


# ---------------------------------------------------------------------------------------------
# File formats


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


def _read_cifar_batch(path: Path, label_key: str) -> tuple[Tensor, Tensor]:
    """One CIFAR pickle batch → ``uint8 (N, 3, 32, 32)`` images and ``int64 (N,)`` labels."""
    redo = (f"delete it and download the dataset again (`{DOWNLOAD_FLAG}`, download=True in "
            "Python)")
    try:
        batch = restricted_pickle_load(path)
    except pickle.UnpicklingError as e:
        if "refusing to load" in str(e):  # RestrictedUnpickler: it asks to run code
            raise BadPickleError(f"{path}: not a CIFAR batch: it asks to run code ({e}), so it "
                                 f"was not loaded; {redo}") from e
        raise BadPickleError(f"{path}: truncated or damaged CIFAR batch ({e}); {redo}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise ValueError(f"{path}: truncated or damaged CIFAR batch ({type(e).__name__}: {e}); "
                         f"{redo}") from e
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


# ---------------------------------------------------------------------------------------------
# Datasets


def _find(root: Path, filename: str) -> Path | None:
    """``root/filename``, or its uncompressed twin for ``.gz`` names, if either exists."""
    for candidate in (root / filename, root / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


class TensorImageDataset(Dataset):
    """Images held as one ``uint8 (N, C, H, W)`` tensor, labels as ``int64 (N,)``.

    ``dataset[i] = (transform(images[i] / max_value), int(targets[i]))``.
    """

    name = ""
    max_value = 255.0
    images: Tensor
    targets: Tensor

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train: bool = True,
        transform: Transform | None = None,
        download: bool = False,
    ) -> None:
        self.root = Path(root) if root is not None else default_root(self.name)
        self.train = train
        self.transform = transform
        self.images, self.targets = self._load(self.root, train, download, root is None)
        num_classes = DATASET_INFO[self.name].num_classes
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= num_classes):
            raise ValueError(f"{self.name} at {self.root}: labels outside [0, {num_classes})")

    def _load(self, root: Path, train: bool, download: bool, default: bool) -> _Pair:
        raise NotImplementedError

    def with_transform(self, transform: Transform | None) -> TensorImageDataset:
        """A view of the same images with another transform (no copy, nothing shared mutably)."""
        view = copy.copy(self)
        view.transform = transform
        return view

    @property
    def classes(self) -> list[int]:
        return list(range(DATASET_INFO[self.name].num_classes))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index].float().div_(self.max_value)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def _require(self, root: Path, files: list[str], default: bool) -> list[Path]:
        """Paths of ``files`` under ``root``, or :class:`DatasetNotFoundError`."""
        found = [_find(root, f) for f in files]
        missing = [root / f for f, p in zip(files, found, strict=True) if p is None]
        if missing:
            raise _not_found(self.name, missing, _looked_in(self.name, None if default else root))
        return [p for p in found if p is not None]

    def _download_files(self, root: Path, fetch: Callable[[], None], default: bool) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fetch()
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            looked = _looked_in(self.name, None if default else root)
            err = _not_found(self.name, [root], looked)
            raise DatasetNotFoundError(f"download into {root} failed ({e}).\n{err}") from e


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


class SVHN(TensorImageDataset):
    """SVHN cropped digits from ``{train,test}_32x32.mat``: ``X (32, 32, 3, N)``, ``y (N, 1)``.

    SVHN labels the digit 0 as 10; it is mapped back to 0.
    """

    name = "svhn"

    def _load(self, root: Path, train: bool, download: bool, default: bool) -> _Pair:
        split = "train" if train else "test"
        filename = f"{split}_32x32.mat"
        if download and _find(root, filename) is None:
            self._download_files(root, lambda: self._fetch(root, split), default)
        (path,) = self._require(root, [filename], default)
        from scipy.io import loadmat

        try:
            mat = loadmat(path)
        except Exception as e:
            raise ValueError(f"{path}: cannot read SVHN .mat file ({e})") from e
        x, y = mat.get("X"), mat.get("y")
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.shape[:3] != (32, 32, 3):
            raise ValueError(f"{path}: expected X of uint8 (32, 32, 3, N)")
        if not isinstance(y, np.ndarray) or y.size != x.shape[3]:
            raise ValueError(f"{path}: expected y with {x.shape[3]} labels")
        images = torch.from_numpy(x).permute(3, 2, 0, 1).contiguous()  # (H, W, C, N) → (N, C, H, W)
        labels = torch.from_numpy(y.reshape(-1).astype(np.int64))
        return images, torch.where(labels == 10, 0, labels)

    def _fetch(self, root: Path, split: str) -> None:
        from torchvision.datasets import SVHN as TorchvisionSVHN
        from torchvision.datasets import utils

        url, filename, md5 = TorchvisionSVHN.split_list[split]
        utils.download_url(url, str(root), filename, md5)


class Digits(TensorImageDataset):
    """scikit-learn's bundled 8×8 digits (values 0..16); the last 360 of 1797 images are test."""

    name = "digits"
    max_value = 16.0
    num_test = 360

    def _load(self, root: Path, train: bool, download: bool, default: bool) -> _Pair:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        cut = len(labels) - self.num_test
        return (images[:cut], labels[:cut]) if train else (images[cut:], labels[cut:])


def _pil_to_float(image: Any) -> Tensor:
    """PIL image → float ``(C, H, W)`` in ``[0, 1]`` as ``u8 / 255`` (exact inverse of ``·255``)."""
    return v2.functional.pil_to_tensor(image).float().div_(255.0)


class ImageNet(Dataset):
    """ImageNet in ImageFolder layout: ``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*``.

    ``transform`` receives the RGB PIL image and must return a float tensor; without one the
    image is returned at its own size as a float ``(3, H, W)`` tensor in ``[0, 1]``. The
    validation split uses the class list of ``root/train`` when present, so labels agree.
    """

    name = "imagenet"

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train: bool = True,
        transform: Transform | None = None,
        download: bool = False,
    ) -> None:
        from torchvision.datasets import ImageFolder

        self.root = Path(root) if root is not None else default_root(self.name)
        self.train = train
        self.transform = transform
        split_dir = self.root / ("train" if train else "val")
        if not split_dir.is_dir():
            raise _not_found(self.name, [split_dir], _looked_in(self.name, root))
        self.folder = ImageFolder(str(split_dir))
        train_dir = self.root / "train"
        if not train and train_dir.is_dir():
            train_classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
            if self.folder.classes != train_classes:
                raise ValueError(
                    f"{split_dir}: class folders differ from {train_dir}; labels would not match"
                )

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def targets(self) -> list[int]:
        return self.folder.targets

    def with_transform(self, transform: Transform | None) -> ImageNet:
        """A view of the same file list with another transform."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.folder.samples[index]
        image = self.folder.loader(path)
        image = self.transform(image) if self.transform is not None else _pil_to_float(image)
        return image, target


DATASETS: dict[str, type[TensorImageDataset] | type[ImageNet]] = {
    "fashion-mnist": FashionMNIST, "mnist": MNIST, "cifar10": CIFAR10, "cifar100": CIFAR100,
    "svhn": SVHN, "imagenet": ImageNet, "digits": Digits,
}

_DATASET_FILES: dict[str, list[str]] = {
    name: [f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    for name in ("fashion-mnist", "mnist")
} | {
    "cifar10": [f"cifar-10-batches-py/{n}" for n in
                (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
}


# ---------------------------------------------------------------------------------------------
# Transforms, splits, loaders


def train_transform(name: str, augment: bool = True) -> Transform | None:
    """The training transform: the dataset's usual augmentation, or the eval one if off.

    CIFAR: random 32-crop with 4-pixel zero padding + horizontal flip; SVHN: the crop only
    (digits are not mirror-symmetric); ImageNet: RandomResizedCrop(224) + flip; digit datasets
    (MNIST, Fashion-MNIST, digits): none.
    """
    name = canonical_name(name)
    if not augment:
        return eval_transform(name)
    if name in ("cifar10", "cifar100"):
        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    if name == "svhn":
        return v2.RandomCrop(32, padding=4)
    if name == "imagenet":
        return v2.Compose([
            v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
            _pil_to_float,
        ])
    return None


def eval_transform(name: str) -> Transform | None:
    """The evaluation transform: none, except ImageNet's Resize(256) + CenterCrop(224)."""
    if canonical_name(name) == "imagenet":
        return v2.Compose([
            v2.Resize(256, antialias=True), v2.CenterCrop(224),
            _pil_to_float,
        ])
    return None


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


def split_indices(n: int, val_size: int | float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic disjoint ``(train_idx, val_idx)`` of ``range(n)``, each sorted.

    ``val_size`` below 1 is a fraction of ``n`` (rounded); from 1 on, a whole count of samples
    (``5000`` and ``5000.0`` alike, as a config file may write it).
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be a count or a fraction, got {val_size!r}")
    if 0 < val_size < 1:
        val_size = round(val_size * n)
    elif val_size != int(val_size):
        raise ValueError(f"val_size must be a fraction below 1 or a whole count, got {val_size}")
    val_size = int(val_size)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} training samples, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


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
