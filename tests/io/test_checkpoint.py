"""Tests for :mod:`sstorch.io.checkpoint`: exact resumption, atomic writes, clear load errors."""

from __future__ import annotations

import ast
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sstorch import SeparableLinear
from sstorch.io import checkpoint as ckpt
from sstorch.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    read_metadata,
    save_checkpoint,
)

# --------------------------------------------------------------------------- helpers


class Net(nn.Module):
    """Separable layer + dropout + dense head: dropout makes the RNG state matter."""

    def __init__(self) -> None:
        super().__init__()
        self.sep = SeparableLinear((4, 4), (3, 4), flatten=True)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.sep(x))))


class Wrapper(nn.Module):
    """DistributedDataParallel look-alike: the real model lives in ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def schedule(epoch: int) -> float:
    """The LR lambda a config would name; rebuilt on resume, never stored."""
    return 0.5**epoch


def make_run(opt_name: str, seed: int):
    torch.manual_seed(seed)
    model = Net()
    if opt_name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    return model, opt, sched


def train(model: nn.Module, opt, sched, steps: int) -> None:
    """Fresh random data every step, so both dropout and data depend on the torch RNG."""
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def tmp_files(directory: Path) -> list[str]:
    """Hidden files left in ``directory`` (every temporary name of a write is hidden)."""
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_resume_is_bitwise_identical(tmp_path, opt_name):
    path = tmp_path / "last.safetensors"
    model, opt, sched = make_run(opt_name, seed=0)
    train(model, opt, sched, 3)
    save_checkpoint(path, model, opt, sched, extra={"epoch": 3})
    lr_at_save = sched.get_last_lr()
    train(model, opt, sched, 2)  # uninterrupted reference

    model2, opt2, sched2 = make_run(opt_name, seed=1)  # different init and RNG stream
    torch.manual_seed(12345)
    extra = load_checkpoint(path, model2, opt2, sched2)
    assert extra == {"epoch": 3}
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == lr_at_save
    train(model2, opt2, sched2, 2)

    assert_same_state(model, model2)
    assert sched2.last_epoch == sched.last_epoch == 5
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        for key, value in opt.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt2.state[p2][key])), key
    if opt_name == "adamw":
        assert opt2.param_groups[0]["betas"] == (0.9, 0.999)
        assert float(opt2.state[next(model2.parameters())]["step"]) == 5


def test_rng_restore_matters(tmp_path):
    """Negative control: without the RNG state, dropout and data diverge."""
    path = tmp_path / "last.safetensors"
    model, opt, sched = make_run("sgd", seed=0)
    train(model, opt, sched, 3)
    save_checkpoint(path, model, opt, sched)
    train(model, opt, sched, 2)

    model2, opt2, sched2 = make_run("sgd", seed=1)
    torch.manual_seed(12345)
    load_checkpoint(path, model2, opt2, sched2, restore_rng=False)
    train(model2, opt2, sched2, 2)
    assert not torch.equal(model.head.weight, model2.head.weight)


def test_numpy_and_python_rng_restored(tmp_path):
    path = tmp_path / "c.safetensors"
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # cached Gaussian state must survive too
    save_checkpoint(path, nn.Linear(2, 2))
    expected = (np.random.rand(4), np.random.randn(), random.random(), random.gauss(0, 1),
                torch.rand(3))
    np.random.seed(99)
    random.seed(99)
    load_checkpoint(path, nn.Linear(2, 2))
    got = (np.random.rand(4), np.random.randn(), random.random(), random.gauss(0, 1),
           torch.rand(3))
    np.testing.assert_array_equal(expected[0], got[0])
    assert expected[1:4] == got[1:4]
    assert torch.equal(expected[4], got[4])


def test_separable_masks_recreated_on_load(tmp_path):
    path = tmp_path / "pruned.safetensors"
    torch.manual_seed(0)
    layer = SeparableLinear((4, 5), (3, 2), rank=2)
    mask = (torch.rand_like(layer.factors[0]) > 0.5).float()
    layer.register_buffer("mask_0", mask)
    save_checkpoint(path, layer)
    assert "mask_0" in load_weights(path)

    fresh = SeparableLinear((4, 5), (3, 2), rank=2)
    assert getattr(fresh, "mask_0", None) is None
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.mask_0, mask)
    assert_same_state(layer, fresh)
    x = torch.randn(7, 4, 5)
    assert torch.equal(layer(x), fresh(x))


def test_lambda_lr_round_trip(tmp_path):
    path = tmp_path / "s.safetensors"
    model = nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for _ in range(4):
        opt.step()
        sched.step()
    save_checkpoint(path, model, opt, sched)

    opt2 = torch.optim.SGD(model.parameters(), lr=0.2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, schedule)  # lambda rebuilt from "config"
    load_checkpoint(path, model, opt2, sched2)
    assert sched2.last_epoch == 4
    assert sched2.get_last_lr() == sched.get_last_lr() == [0.2 * 0.5**4]
    assert sched2.lr_lambdas[0] is schedule
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == 0.2 * 0.5**5


def test_lambda_object_state_kept_as_json(tmp_path):
    class Warmup:
        def __init__(self, steps: int) -> None:
            self.steps = steps
            self.note = object()  # not JSON: dropped with a warning

        def __call__(self, epoch: int) -> float:
            return min(1.0, (epoch + 1) / self.steps)

    path = tmp_path / "s.safetensors"
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Warmup(10))
    sched.lr_lambdas[0].steps = 4
    with pytest.warns(UserWarning, match="not JSON-serialisable"):
        save_checkpoint(path, model, opt, sched)
    sched2 = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=1.0),
                                               Warmup(10))
    load_checkpoint(path, scheduler=sched2, restore_rng=False)
    assert sched2.lr_lambdas[0].steps == 4


def test_extra_and_metadata(tmp_path):
    path = tmp_path / "best.safetensors"
    extra = {"epoch": 7, "config": {"model": {"name": "mlp", "rank": 2}}, "metrics": [0.5, 0.75],
             "best_acc": 0.9125, "worst": float("inf")}
    save_checkpoint(path, nn.Linear(2, 2), extra=extra)
    assert read_metadata(path) == extra
    assert load_checkpoint(path, nn.Linear(2, 2)) == extra
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format_version"] == str(ckpt.FORMAT_VERSION)
    assert json.loads(meta["sstorch"])["extra"]["epoch"] == 7
    assert {"model.weight", "model.bias", "rng.torch"} <= keys


def test_extra_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match=r"extra\['loss'\]"):
        save_checkpoint(tmp_path / "c.safetensors", nn.Linear(2, 2),
                        extra={"loss": torch.tensor(1.0)})
    assert list(tmp_path.iterdir()) == []


def test_tied_and_non_contiguous_tensors(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.out = nn.Linear(4, 5, bias=False)
            self.out.weight = self.emb.weight  # weight tying: shared storage
            self.register_buffer("t", torch.randn(3, 6).t())  # non-contiguous

    path = tmp_path / "tied.safetensors"
    model = Tied()
    assert not model.t.is_contiguous()
    save_checkpoint(path, model)
    fresh = Tied()
    load_checkpoint(path, fresh)
    assert fresh.out.weight is fresh.emb.weight
    assert torch.equal(fresh.emb.weight, model.emb.weight)
    assert torch.equal(fresh.t, model.t)


def test_ddp_style_wrapper(tmp_path):
    path = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    inner = Net()
    save_checkpoint(path, Wrapper(inner))
    assert all(not k.startswith("module.") for k in load_weights(path))

    target = Wrapper(Net())  # load into a wrapper ...
    load_checkpoint(path, target)
    assert_same_state(inner, target.module)
    bare = Net()  # ... or into the bare model
    load_checkpoint(path, bare)
    assert_same_state(inner, bare)


# --------------------------------------------------------------------------- atomicity


def test_failed_replace_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, nn.Linear(2, 2), extra={"epoch": 1})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CheckpointError, match="previous file"):
        save_checkpoint(path, nn.Linear(2, 2), extra={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_metadata(path) == {"epoch": 1}
    assert tmp_files(tmp_path) == []


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, nn.Linear(2, 2), extra={"epoch": 1})
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt  # not even an Exception: cleanup must still run

    monkeypatch.setattr(ckpt, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, nn.Linear(2, 2), extra={"epoch": 2})
    assert path.read_bytes() == before
    assert load_checkpoint(path, nn.Linear(2, 2)) == {"epoch": 1}
    assert tmp_files(tmp_path) == []


def test_overwrite_and_no_temp_left(tmp_path):
    path = tmp_path / "last.safetensors"
    for epoch in range(3):
        save_checkpoint(path, nn.Linear(2, 2), extra={"epoch": epoch})
    assert read_metadata(path) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope" / "deeper"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        save_checkpoint(missing / "c.safetensors", nn.Linear(2, 2))
    assert issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------------------- load errors


def test_missing_file(tmp_path):
    save_checkpoint(tmp_path / "best.safetensors", nn.Linear(2, 2))
    path = tmp_path / "last.safetensors"
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(path, nn.Linear(2, 2))
    assert str(path) in str(err.value) and "best.safetensors" in str(err.value)


def test_truncated_file(tmp_path):
    good = tmp_path / "best.safetensors"
    save_checkpoint(good, Net())
    path = tmp_path / "last.safetensors"
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for load in (lambda: load_checkpoint(path, Net()), lambda: load_weights(path),
                 lambda: read_metadata(path)):
        with pytest.raises(CheckpointError, match="truncated or corrupted") as err:
            load()
        message = str(err.value)
        assert str(path) in message and "\n" not in message
        assert str(good) in message  # suggests the surviving checkpoint


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, os.urandom(4096),
                                     b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "c.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as err:
        load_checkpoint(path, nn.Linear(2, 2))
    assert "\n" not in str(err.value)


def test_corrupted_sstorch_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    save_file({"model.weight": torch.zeros(2)}, path, metadata={"sstorch": "{broken"})
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_weights(path)


def test_plain_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not an sstorch checkpoint"):
        load_checkpoint(path, nn.Linear(2, 2))


def test_model_mismatch_lists_keys(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    other = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2), nn.Linear(2, 2),
                          nn.Linear(2, 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="config may not match") as err:
        load_checkpoint(path, other)
    message = str(err.value)
    assert "0.weight: shape (8, 4) in file vs (6, 4) in model" in message
    assert "7 differing keys" in message and "missing 4.bias" not in message  # 5 listed
    assert str(path) in message and "2 more" in message and "\n" not in message
    for k, v in other.state_dict().items():  # untouched
        assert torch.equal(v, before[k])


def test_unexpected_keys_and_non_strict(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"unexpected 1\.weight"):
        load_checkpoint(path, nn.Sequential(nn.Linear(2, 2)))
    load_checkpoint(path, nn.Sequential(nn.Linear(2, 2)), strict=False)


def test_optimizer_mismatch(tmp_path):
    path = tmp_path / "c.safetensors"
    model = nn.Linear(2, 2)
    save_checkpoint(path, model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(CheckpointError, match="AdamW optimizer state but a SGD"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    two_groups = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}])
    with pytest.raises(CheckpointError, match="does not match the optimizer"):
        load_checkpoint(path, model, two_groups)
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, torch.optim.AdamW(model.parameters()))


@pytest.mark.parametrize("module", ["checkpoint", "metadata", "rng"])
def test_no_unsafe_deserialisation_in_source(module):
    source = (Path(ckpt.__file__).parent / f"{module}.py").read_text()
    assert not re.search(r"\bpickle\b|\btorch\.load\b|\btorch\.save\b", source)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_a_flipped_bit_in_tensor_data_is_detected(tmp_path):
    good = tmp_path / "best.safetensors"
    save_checkpoint(good, Net())
    data = bytearray(good.read_bytes())
    header = int.from_bytes(data[:8], "little")
    path = tmp_path / "last.safetensors"
    data[8 + header + 5] ^= 0x01  # inside the first tensor's bytes: the file still parses
    path.write_bytes(bytes(data))
    for load in (lambda: load_checkpoint(path, Net()), lambda: load_weights(path)):
        with pytest.raises(CheckpointError, match="does not match its SHA-256") as err:
            load()
        assert str(path) in str(err.value) and str(good) in str(err.value)
    load_checkpoint(good, Net())  # the intact file still loads


def test_checkpoints_without_checksums_still_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    net = Net()
    save_checkpoint(path, net)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["sstorch"])
    del doc["sha256"]  # as written by sstorch before checksums
    save_file(tensors, str(path), metadata={**meta, "sstorch": json.dumps(doc)})
    loaded = Net()
    load_checkpoint(path, loaded)
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
