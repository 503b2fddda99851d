"""scikit-learn's bundled 8×8 digits, the dataset that needs no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sstorch.data.base import TensorImageDataset, _Pair

__all__ = ["Digits"]


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
