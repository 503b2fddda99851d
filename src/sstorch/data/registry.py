"""Dataset constants and where each dataset's files are looked for.

``DATASET_INFO`` holds what a model needs to know about a dataset (classes, image shape,
mean/std) and where its files live; :func:`default_root` picks the first of ``$SSTORCH_DATA``,
the system roots and the cache that holds them. Missing files raise
:class:`DatasetNotFoundError`, whose message says where we looked and how to get the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = [
    "CACHE_DIR", "DATASET_INFO", "DATA_ENV", "DOWNLOAD_FLAG", "ROOT_FLAG", "DatasetInfo",
    "DatasetNotFoundError", "Transform", "canonical_name", "default_root",
]

Transform = Callable[[Any], Tensor]

DOWNLOAD_FLAG = "--set data.download=true"
ROOT_FLAG = "--set data.root=PATH"
CACHE_DIR = Path("~/.cache/sstorch").expanduser()
DATA_ENV = "SSTORCH_DATA"


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

# The files whose presence makes a root count as holding the dataset (see default_root).
_DATASET_FILES: dict[str, list[str]] = {
    name: [f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    for name in ("fashion-mnist", "mnist")
} | {
    "cifar10": [f"cifar-10-batches-py/{n}" for n in
                (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
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


def _env_roots(name: str) -> tuple[Path, ...]:
    """``$SSTORCH_DATA`` and ``$SSTORCH_DATA/<name>`` when the variable is set: a folder holding
    datasets in their official layouts (``cifar-10-batches-py/``, ``mnist/*.gz``), searched
    before the system roots and the cache, so sweeps find shared data without a config change."""
    base = os.environ.get(DATA_ENV, "").strip()
    if not base:
        return ()
    base_path = Path(os.path.expandvars(base)).expanduser()
    return (base_path, base_path / name)


def _find(root: Path, filename: str) -> Path | None:
    """``root/filename``, or its uncompressed twin for ``.gz`` names, if either exists."""
    for candidate in (root / filename, root / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


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
    """The roots searched for ``name``: ``root`` if given, else env, system roots and cache."""
    info = DATASET_INFO[name]
    return ([Path(root)] if root is not None
            else [*_env_roots(name), *info.system_roots, info.default_root])


def _not_found(name: str, missing: list[Path], looked: list[Path]) -> DatasetNotFoundError:
    """The error for missing files: where we looked, what is missing, how to get it."""
    where = ", ".join(str(p) for p in looked)
    files = "\n  ".join(str(p) for p in missing)
    return DatasetNotFoundError(
        f"{name}: data not found (looked in {where}); missing:\n  {files}\n"
        f"To get it: {DATASET_INFO[name].download_hint}."
    )
