"""sstorch.data.svhn, .imagefolder and .digits on tiny files in their real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dataset_files import (
    make_imagenet,
    make_svhn,
)
from sstorch.data import (
    build_datasets,
    get_dataset,
)


def test_svhn_round_trip_and_label_10_is_0(tmp_path: Path) -> None:
    arrays = make_svhn(tmp_path)
    train = get_dataset("svhn", tmp_path, train=True)
    assert (len(train), len(get_dataset("svhn", tmp_path, train=False))) == (20, 6)
    x_raw, y_raw = arrays["train"]
    expected = np.where(y_raw[:, 0] == 10, 0, y_raw[:, 0]).tolist()
    assert [train[i][1] for i in range(20)] == expected
    assert train[0][1] == 0
    x, _ = train[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x * 255, torch.from_numpy(x_raw[:, :, :, 4]).permute(2, 0, 1).float())



def test_imagenet_folder(tmp_path: Path) -> None:
    pixels = make_imagenet(tmp_path)
    raw = get_dataset("imagenet", tmp_path, train=False)  # no transform: native size
    assert len(raw) == 6 and raw.classes == ["n01440764", "n01443537"]
    x, y = raw[4]
    path = raw.folder.samples[4][0]
    assert y == 1 and x.dtype == torch.float32 and x.shape == (3, 20, 30)
    assert torch.equal(x * 255, torch.from_numpy(pixels[path]).permute(2, 0, 1).float())
    train, val, test = build_datasets("imagenet", tmp_path, val_size=2)
    assert (len(train), len(val), len(test)) == (4, 2, 6)
    for ds in (train, val, test):
        x, y = ds[0]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y in (0, 1)
        assert 0.0 <= x.min() and x.max() <= 1.0



def test_digits_bundled() -> None:
    train, val, test = build_datasets("digits", val_size=0.1)
    assert (len(train) + len(val), len(test)) == (1437, 360)
    assert len(val) == round(0.1 * 1437)
    x, y = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    assert 0.0 <= x.min() and x.max() <= 1.0
    full = get_dataset("digits", train=True)
    assert sorted(set(full.targets.tolist())) == list(range(10))
    assert full.images.max() == 16 and torch.equal(full[0][0] * 16, full.images[0].float())
    assert torch.equal(get_dataset("digits", train=False).images, test.images)  # fixed split

