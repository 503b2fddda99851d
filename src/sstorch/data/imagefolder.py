"""ImageNet in ImageFolder layout, read lazily (one decoded PIL image per item)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from sstorch.data.registry import Transform, _looked_in, _not_found, default_root

__all__ = ["ImageNet"]


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
