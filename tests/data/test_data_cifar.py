"""sstorch.data.cifar: the CIFAR pickles, read with the restricted unpickler."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_files import (
    SHARED,
    Exploit,
    as_uint8,
    make_cifar10,
    write_cifar_batch,
)
from sstorch import data
from sstorch.data import (
    DATASET_INFO,
    get_dataset,
)


def test_cifar10_round_trip(tmp_path: Path) -> None:
    train_batches, test_batch = make_cifar10(tmp_path)
    first = tmp_path / "cifar-10-batches-py" / "data_batch_1"  # numpy 1.x names, as the originals
    first.write_bytes(first.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    assert b"cnumpy.core.multiarray\n_reconstruct" in first.read_bytes()
    train = get_dataset("cifar10", tmp_path, train=True)
    test = get_dataset("cifar10", tmp_path, train=False)
    assert (len(train), len(test)) == (40, 8)
    x, y = train[8 + 2]  # second batch, third image
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    row = train_batches[1][b"data"][2]
    assert torch.equal(as_uint8(x), torch.from_numpy(row).reshape(3, 32, 32))
    assert torch.equal(x * 255, torch.from_numpy(row).reshape(3, 32, 32).float())
    assert y == train_batches[1][b"labels"][2]
    assert [test[i][1] for i in range(8)] == test_batch[b"labels"]



def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = write_cifar_batch(folder / "train", 12, b"fine_labels", 100)
    write_cifar_batch(folder / "test", 4, b"fine_labels", 100)
    ds = get_dataset("cifar100", tmp_path, train=True)
    assert len(ds) == 12 and len(get_dataset("cifar100", tmp_path, train=False)) == 4
    assert [ds[i][1] for i in range(12)] == train[b"fine_labels"]
    assert torch.equal(as_uint8(ds[5][0]).flatten(), torch.from_numpy(train[b"data"][5]))
    assert DATASET_INFO["cifar100"].num_classes == 100



@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_refused(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"
    payload = {b"data": Exploit(marker), b"fine_labels": [0]}
    (folder / "train").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        get_dataset("cifar100", tmp_path, train=True)
    assert not marker.exists()
    (folder / "train").write_bytes(pickle.dumps(print, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match=r"(__builtin__|builtins)\.print"):
        data.restricted_pickle_load(folder / "train")



def test_cifar_batch_wrong_content(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}))
    with pytest.raises(ValueError, match="lacks"):
        get_dataset("cifar100", tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}
    (folder / "train").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="3072"):
        get_dataset("cifar100", tmp_path)



@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py" / "test_batch").is_file(),
                    reason=f"real CIFAR-10 not found in {SHARED} (only on the project's machines)")
def test_real_cifar10_from_the_shared_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official python-pickle files read unchanged: sizes, label order, channel means."""
    monkeypatch.setenv("SSTORCH_DATA", str(SHARED))
    test = get_dataset("cifar10", train=False)
    assert len(test) == 10_000 and test.images.shape == (10_000, 3, 32, 32)
    assert test.targets[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # cat ship ship plane …
    train = get_dataset("cifar10", train=True)
    assert len(train) == 50_000 and torch.bincount(train.targets).tolist() == [5000] * 10
    mean = train.images.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(DATASET_INFO["cifar10"].mean), atol=1e-3)



@pytest.mark.parametrize("damage", ["malicious", "truncated"])
def test_bad_cifar_batch_is_a_one_line_cli_error_naming_the_file(tmp_path, capsys, monkeypatch,
                                                                  damage):
    """A refused (code-running) pickle or an interrupted download: `sstorch train` names the
    file and says how to get it again, in one line, without a traceback."""
    from sstorch.cli import main

    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "test", 4, b"fine_labels", 100)
    bad = folder / "train"
    if damage == "malicious":
        marker = tmp_path / "pwned"
        bad.write_bytes(pickle.dumps({b"data": Exploit(marker), b"fine_labels": [0]}))
    else:
        write_cifar_batch(bad, 12, b"fine_labels", 100)
        bad.write_bytes(bad.read_bytes()[:-200])  # cut like an interrupted download
    code = main(["train", "--set", "data.name=cifar100", f"data.root={tmp_path}",
                 f"out_dir={tmp_path / 'runs'}", "epochs=1", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"sstorch train: error: {bad}: ")
    assert "data.download=true" in err
    assert ("asks to run code" if damage == "malicious" else "truncated or damaged") in err
    if damage == "malicious":
        assert not marker.exists()
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started

