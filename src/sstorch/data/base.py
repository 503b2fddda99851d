"""The in-memory dataset base: images as one ``uint8 (N, C, H, W)`` tensor, converted per item."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from sstorch.data.registry import (
    DATASET_INFO,
    DatasetNotFoundError,
    Transform,
    _find,
    _looked_in,
    _not_found,
    default_root,
)

__all__ = ["TensorImageDataset"]

_Pair = tuple[Tensor, Tensor]


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
