"""sstorch.data.split: the deterministic validation split."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataset_files import (
    make_mnist,
)
from sstorch.data import (
    build_datasets,
    split_indices,
)


def test_val_split_deterministic_and_disjoint(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=50)
    t1, v1, _ = build_datasets("mnist", tmp_path, val_size=10, seed=3)
    t2, v2, _ = build_datasets("mnist", tmp_path, val_size=10, seed=3)
    _, v3, _ = build_datasets("mnist", tmp_path, val_size=10, seed=4)
    assert v1.indices == v2.indices and t1.indices == t2.indices and v1.indices != v3.indices
    assert len(v1) == 10 and len(t1) == 40
    assert set(t1.indices).isdisjoint(v1.indices)
    assert sorted(t1.indices + v1.indices) == list(range(50))
    _, vf, _ = build_datasets("mnist", tmp_path, val_size=0.2)
    assert len(vf) == 10
    full, none, _ = build_datasets("mnist", tmp_path, val_size=0)
    assert none is None and len(full) == 50



def test_val_size_count_or_fraction() -> None:
    assert len(split_indices(50, 0.2)[1]) == 10
    assert len(split_indices(50, 10.0)[1]) == 10  # a config file's float count
    assert len(split_indices(50, 0.0)[1]) == 0



@pytest.mark.parametrize("bad", [50, 60, -1, 2.5, -0.1, True, "10", None])
def test_bad_val_size(bad: object) -> None:
    with pytest.raises(ValueError, match="val_size"):
        split_indices(50, bad)  # type: ignore[arg-type]

