"""Sparse packing: exact round trip, and the payload equals summary's byte accounting."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sstorch.config import load_config
from sstorch.data import DATASET_INFO
from sstorch.export.sparse import pack_sparse, unpack_sparse
from sstorch.layers.separable import SeparableLinear
from sstorch.models import build_model
from sstorch.pruning.factor import prune_factors
from sstorch.structure.summary import summary

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(*overrides: str) -> torch.nn.Module:
    info = DATASET_INFO["fashion-mnist"]
    cfg = load_config(None, ["model.hidden=[[16,16]]", *overrides])
    return build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std).eval()


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_round_trip_is_exact_and_bytes_match_summary(tmp_path, sparsity):
    torch.manual_seed(0)
    model = _mlp("model.separate_head=true")
    if sparsity:
        prune_factors(model, sparsity)
    report = pack_sparse(model, tmp_path / "m.safetensors")
    s = summary(model)
    assert report.param_bytes == s.bytes_sparse
    assert report.dense_fp32_bytes == s.bytes_dense_fp32
    size = (tmp_path / "m.safetensors").stat().st_size
    assert report.file_bytes == size == report.param_bytes + report.buffer_bytes + \
        report.header_bytes
    assert report.buffer_bytes == 8  # Normalize's mean and std
    # Unpruned: every tensor dense; pruned: the factors go bitmask, and the file shrinks.
    assert (report.n_bitmask > 0) == (sparsity >= 0.5)
    if sparsity == 0.9:
        assert report.param_bytes < 0.4 * s.bytes_dense_fp32  # biases stay dense

    torch.manual_seed(1)
    fresh = _mlp("model.separate_head=true")
    unpack_sparse(tmp_path / "m.safetensors", fresh)
    own, back = model.state_dict(), fresh.state_dict()
    assert own.keys() == back.keys()
    for k in own:
        assert torch.equal(own[k], back[k]), k
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    # Pruned layers are pruned again after loading (masks are live buffers).
    assert all(bool(layer.masks()) == bool(sparsity) for layer in fresh.modules()
               if isinstance(layer, SeparableLinear))


def test_payload_encodings(tmp_path):
    torch.manual_seed(0)
    model = _mlp()
    prune_factors(model, 0.75)
    pack_sparse(model, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        enc = json.loads(f.metadata()["sstorch.sparse"])["encoding"]
        bits = f.get_tensor("net.1.factors.0::bits")
        values = f.get_tensor("net.1.factors.0::values")
    assert enc["net.1.factors.0"] == "bitmask" and enc["net.3.weight"] == "dense"
    assert "net.1.mask_0" not in keys and "net.1.factors.0" not in keys
    factor = model.net[1].factors[0]
    assert bits.dtype == torch.uint8 and bits.numel() == -(-factor.numel() // 8)
    assert values.dtype == torch.float32 and values.numel() == int(torch.count_nonzero(factor))


def test_errors(tmp_path):
    model = _mlp()
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        pack_sparse(model, tmp_path / "missing" / "m.safetensors")
    pack_sparse(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="does not fit the model"):
        unpack_sparse(tmp_path / "m.safetensors", _mlp("model.hidden=[[8,8]]"))
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not an sstorch sparse file"):
        unpack_sparse(tmp_path / "foreign.safetensors", model)


def test_pruned_dense_layers_pack_as_bitmasks_without_their_masks(tmp_path):
    """A magnitude-pruned dense MLP (``weight_mask`` buffers, sstorch.pruning.magnitude): the file
    holds
    each pruned weight as bitmask + values and no mask, so it is far smaller than the dense
    weights; unpacking into a fresh model restores the weights, the masks and the function."""
    from sstorch.pruning.magnitude import prune_linear_

    torch.manual_seed(0)
    model = _mlp("model.structure=dense", "constraints.lambda_sparsity=0",
                 "constraints.lambda_cond=0")
    prune_linear_(model, keep=2000)
    report = pack_sparse(model, tmp_path / "p.safetensors")
    s = summary(model)
    assert report.param_bytes == s.bytes_sparse
    assert report.buffer_bytes == 8  # Normalize only: the weight masks are not stored
    assert report.file_bytes < 0.2 * s.bytes_dense_fp32
    with safe_open(str(tmp_path / "p.safetensors"), framework="pt") as f:
        assert not any(k.endswith("weight_mask") for k in f.keys())

    torch.manual_seed(1)
    fresh = _mlp("model.structure=dense", "constraints.lambda_sparsity=0",
                 "constraints.lambda_cond=0")
    unpack_sparse(tmp_path / "p.safetensors", fresh)
    own, back = model.state_dict(), fresh.state_dict()
    assert own.keys() == back.keys()  # weight_mask buffers included
    for k in own:
        assert torch.equal(own[k], back[k]), k
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert summary(fresh).total_nnz == summary(model).total_nnz
