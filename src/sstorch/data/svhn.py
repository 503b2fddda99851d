"""SVHN cropped digits from the ``{train,test}_32x32.mat`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sstorch.data.base import TensorImageDataset, _Pair
from sstorch.data.registry import _find

__all__ = ["SVHN"]


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
