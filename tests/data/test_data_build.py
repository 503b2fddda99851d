"""sstorch.data.build and .transforms: augmentation, the (train, val, test) triple, loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dataset_files import (
    make_cifar10,
    make_mnist,
)
from sstorch.data import (
    build_datasets,
    eval_transform,
    get_dataset,
    make_loader,
    train_transform,
)


def test_augmentation_changes_train_only(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    torch.manual_seed(0)
    train, val, test = build_datasets("cifar10", tmp_path, val_size=10, augment=True)
    raw = get_dataset("cifar10", tmp_path, train=True)
    raw_test = get_dataset("cifar10", tmp_path, train=False)
    changed = [not torch.equal(train[i][0], raw[int(train.indices[i])][0]) for i in range(30)]
    assert sum(changed) >= 20
    assert all(torch.equal(val[i][0], raw[int(val.indices[i])][0]) for i in range(10))
    assert all(torch.equal(test[i][0], raw_test[i][0]) for i in range(8))
    assert val.dataset is not train.dataset and val.dataset.transform is None
    assert val.dataset.images is train.dataset.images  # shared storage, own transform
    plain, _, _ = build_datasets("cifar10", tmp_path, val_size=10, augment=False)
    assert all(torch.equal(plain[i][0], raw[int(plain.indices[i])][0]) for i in range(30))



def test_transforms_per_dataset() -> None:
    def kinds(t: object) -> list[str]:
        inner = getattr(t, "transforms", [t])
        return [type(s).__name__ for s in inner]

    assert kinds(train_transform("cifar10")) == ["RandomCrop", "RandomHorizontalFlip"]
    assert kinds(train_transform("svhn")) == ["RandomCrop"]
    assert train_transform("svhn").padding == [4, 4, 4, 4]
    assert "RandomResizedCrop" in kinds(train_transform("imagenet"))
    assert kinds(eval_transform("imagenet"))[:2] == ["Resize", "CenterCrop"]
    for name in ("mnist", "fashion-mnist", "digits", "cifar100", "svhn"):
        assert eval_transform(name) is None
    for name in ("mnist", "fashion-mnist", "digits"):
        assert train_transform(name) is None
    assert train_transform("cifar10", augment=False) is None



def test_make_loader(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=40)
    train, val, _ = build_datasets("mnist", tmp_path, val_size=8)
    loader = make_loader(train, batch_size=8, train=True, seed=1)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.int64
    order = [b[1].tolist() for b in make_loader(train, 8, train=True, seed=1)]
    assert order == [b[1].tolist() for b in make_loader(train, 8, train=True, seed=1)]
    assert order != [b[1].tolist() for b in make_loader(train, 8, train=True, seed=2)]
    in_order = torch.cat([b[1] for b in make_loader(val, 3, train=False)])
    assert in_order.tolist() == [val[i][1] for i in range(len(val))]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            make_loader(train, bad, train=True)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="torch\\.distributed"):
        make_loader(train, 8, train=True, distributed=True)



def test_make_loader_distributed(tmp_path: Path) -> None:
    import torch.distributed as dist

    make_mnist(tmp_path, n_train=20)
    ds = get_dataset("mnist", tmp_path)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        loader = make_loader(ds, 4, train=True, seed=5, distributed=True)
        assert isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler)
        assert loader.sampler.shuffle and loader.sampler.seed == 5
        assert sum(len(b[1]) for b in loader) == 20
        assert not make_loader(ds, 4, train=False, distributed=True).sampler.shuffle
    finally:
        dist.destroy_process_group()

