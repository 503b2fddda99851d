"""Tests for :mod:`sstorch.structure.summary`: parameter, nonzero, MAC and byte accounting.

Every expected number is computed by hand in the test (shapes written out, MACs counted mode by
mode), not by calling the layer's own accounting helpers.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from sstorch.layers.separable import SeparableLinear
from sstorch.structure.summary import ModelSummary, sparse_tensor_bytes, summary
from sstorch.structure.surgery import separate


def tiny_model() -> nn.Sequential:
    """sep: (4, 6) → (5, 3) [flat 24 → 15], LayerNorm(15), ReLU, fc: 15 → 7."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        sep=SeparableLinear((4, 6), (5, 3), flatten=True),
        norm=nn.LayerNorm(15),  # a non-FC parameter block: weight ones, bias zeros
        act=nn.ReLU(),
        fc=nn.Linear(15, 7),
    ))


# Hand counts for tiny_model() before any pruning.
SEP_PARAMS = 5 * 4 + 3 * 6 + 15  # U1 (5, 4), U2 (3, 6), bias 15
SEP_DENSE = 24 * 15 + 15
NORM_PARAMS = 15 + 15
FC_PARAMS = 15 * 7 + 7
# Mode 1 maps n1 = 4 → m1 = 5 for each of the n2 = 6 columns; mode 2 maps 6 → 3 for each of the
# m1 = 5 rows.
SEP_MACS = 5 * 4 * 6 + 3 * 6 * 5
FC_MACS = 15 * 7


def prune_tiny(model: nn.Sequential) -> None:
    """Zero 4 entries of U1 and 1 of the bias by hand, 5 of U2 by a mask, 3 of fc.weight."""
    sep = model.sep
    with torch.no_grad():
        sep.factors[0][0, 0, :] = 0
        sep.bias[3] = 0
        model.fc.weight[0, :3] = 0
    mask = torch.ones_like(sep.factors[1])
    mask[0, 0, :5] = 0
    sep.register_buffer("mask_1", mask)


# --------------------------------------------------------------------------- hand-built model


def test_summary_counts_of_unpruned_model():
    s = summary(tiny_model())
    assert s.total_params == SEP_PARAMS + NORM_PARAMS + FC_PARAMS == 195
    assert s.separable_params == SEP_PARAMS == 53
    assert s.dense_equivalent_params == SEP_DENSE + NORM_PARAMS + FC_PARAMS == 517
    assert s.fc_params == SEP_PARAMS + FC_PARAMS
    assert s.fc_dense_params == SEP_DENSE + FC_PARAMS
    assert s.compression == pytest.approx(517 / 195)
    assert s.fc_compression == pytest.approx(487 / 165)
    # LayerNorm's bias starts at zero: 15 of the 195 parameters are zeros.
    assert s.total_nnz == 195 - 15
    assert s.separable_nnz == s.separable_params
    assert s.fc_nnz == s.fc_params
    assert (s.macs, s.dense_equivalent_macs, s.macs_scope) == (
        SEP_MACS + FC_MACS, 24 * 15 + FC_MACS, "fc-only")
    assert (s.macs, s.dense_equivalent_macs) == (315, 465)
    assert s.bytes_dense_fp32 == 4 * 195
    assert s.bytes_dense_equivalent_fp32 == 4 * 517


def test_summary_layers():
    model = tiny_model()
    model.sep2 = SeparableLinear((7,), (7,), bias=False)
    model.sep3 = SeparableLinear((4, 6), (5, 3), rank=2, flatten=True)
    s = summary(model)
    assert [(la.name, la.kind) for la in s.layers] == [
        ("sep", "separable"), ("fc", "linear"), ("sep2", "separable"), ("sep3", "separable")]
    sep, fc, sep2, sep3 = s.layers
    assert sep.shape == "4×6 → 5×3"
    assert (sep.params, sep.nnz, sep.dense_params, sep.macs) == (53, 53, 375, 210)
    assert sep.compression == pytest.approx(375 / 53)
    assert fc.shape == "15 → 7"
    assert (fc.params, fc.nnz, fc.dense_params, fc.macs) == (112, 112, 112, 105)
    assert fc.compression == 1
    assert (sep2.params, sep2.dense_params, sep2.macs) == (49, 49, 49)
    assert sep3.shape == "4×6 → 5×3 (rank 2)"
    assert (sep3.params, sep3.macs) == (2 * 38 + 15, 2 * 210)


def test_summary_nnz_respects_zeros_and_masks():
    model = tiny_model()
    prune_tiny(model)
    s = summary(model)
    sep_nnz = (20 - 4) + (18 - 5) + (15 - 1)
    fc_nnz = (105 - 3) + 7
    assert s.layers[0].nnz == s.separable_nnz == sep_nnz == 43
    assert s.layers[1].nnz == fc_nnz
    assert s.fc_nnz == sep_nnz + fc_nnz
    assert s.total_nnz == sep_nnz + 15 + fc_nnz  # LayerNorm: 15 ones, 15 zeros
    assert s.compression_nnz == pytest.approx(517 / 167)
    # Masks and zeros change nonzeros, not stored parameters; the mask buffer is no parameter.
    assert (s.total_params, s.separable_params, s.dense_equivalent_params) == (195, 53, 517)
    assert s.bytes_dense_fp32 == 4 * 195


def test_summary_sparse_bytes_by_hand():
    model = tiny_model()
    prune_tiny(model)
    per_tensor = [  # (numel, nnz) of every stored tensor, masks applied
        (20, 16), (18, 13), (15, 14),  # U1, U2, sep bias
        (15, 15), (15, 0),  # LayerNorm weight, bias
        (105, 102), (7, 7),  # fc weight, bias
    ]
    expected = sum(min(4 * n, math.ceil(n / 8) + 4 * z) for n, z in per_tensor)
    assert expected == 67 + 55 + 58 + 60 + 2 + 420 + 28
    assert summary(model).bytes_sparse == expected


@pytest.mark.parametrize(
    ("tensor", "value_bytes", "expected"),
    [
        (torch.zeros(100), 4, 13),  # bitmask only
        (torch.ones(100), 4, 400),  # dense is cheaper than bitmask + values
        (torch.cat([torch.ones(50), torch.zeros(50)]), 4, 13 + 200),
        (torch.cat([torch.ones(10), torch.zeros(90)]).half(), 2, 13 + 20),
        (torch.ones(3, 3), 4, 36),
    ],
)
def test_sparse_tensor_bytes(tensor, value_bytes, expected):
    assert sparse_tensor_bytes(tensor, value_bytes) == expected


def test_summary_macs_with_example_input_counts_tokens():
    model = tiny_model()
    s = summary(model, torch.randn(3, 24))
    assert (s.macs, s.dense_equivalent_macs, s.macs_scope) == (315, 465, "model")
    s = summary(model, torch.randn(3, 5, 24))  # 5 tokens per input
    assert (s.macs, s.dense_equivalent_macs) == (5 * 315, 5 * 465)


def conv_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1),
        bn=nn.BatchNorm2d(8),
        act=nn.ReLU(),
        conv2=nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        flat=nn.Flatten(),
        sep=SeparableLinear((8, 4, 4), (2, 2, 3), flatten=True),
        act2=nn.ReLU(),
        fc=nn.Linear(12, 5),
    ))


def test_summary_macs_with_convolutions():
    model = conv_model()
    s = summary(model, torch.randn(2, 3, 8, 8))
    conv1 = (8 * 8 * 8) * 3 * 3 * 3  # out (8, 8, 8) per input, Cin/groups = 3, 3×3 kernel
    conv2 = (8 * 4 * 4) * (8 // 2) * 3 * 3  # stride 2 → (8, 4, 4), groups = 2
    # (8, 4, 4) → (2, 2, 3) mode by mode: 8 → 2 over 4·4, 4 → 2 over 2·4, 4 → 3 over 2·2.
    sep = 2 * 8 * 16 + 2 * 4 * 8 + 3 * 4 * 4
    fc = 12 * 5
    assert s.macs_scope == "model"
    assert s.macs == conv1 + conv2 + sep + fc == 18860
    assert s.dense_equivalent_macs == conv1 + conv2 + 128 * 12 + fc
    fc_only = summary(model)
    assert (fc_only.macs, fc_only.dense_equivalent_macs) == (sep + fc, 128 * 12 + fc)
    assert fc_only.macs_scope == "fc-only"


def test_summary_example_input_leaves_model_state():
    model = conv_model().train()
    before = copy.deepcopy(model.state_dict())
    summary(model, torch.randn(4, 3, 8, 8))
    assert model.training and model.bn.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.eval()
    summary(model, torch.randn(4, 3, 8, 8))
    assert not model.training and not model.bn.training


def test_summary_example_input_keeps_per_module_modes():
    model = conv_model().train()
    model.bn.eval()  # e.g. frozen BatchNorm while fine-tuning
    summary(model, torch.randn(2, 3, 8, 8))
    assert model.training and not model.bn.training


def test_summary_table_and_dict():
    model = tiny_model()
    prune_tiny(model)
    s = summary(model)
    assert isinstance(s, ModelSummary)
    text = s.table()
    assert str(s) == text
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["layer", "kind"]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == {"sep", "fc"}
    assert "separable" in rows["sep"] and "4×6 → 5×3" in rows["sep"] and "43" in rows["sep"]
    assert "linear" in rows["fc"] and "15 → 7" in rows["fc"]
    (comp_line,) = [line for line in lines if line.startswith("compression")]
    assert f"model {517 / 195:.1f}x" in comp_line
    assert f"by nnz {517 / 167:.1f}x" in comp_line
    assert f"FC part {487 / 165:.1f}x" in comp_line
    assert "195" in text and "517" in text

    d = s.as_dict()
    assert d["compression"] == pytest.approx(517 / 195)
    assert d["compression_nnz"] == pytest.approx(517 / 167)
    assert d["fc_compression"] == pytest.approx(487 / 165)
    assert d["total_params"] == 195 and d["total_nnz"] == 167 and d["macs_scope"] == "fc-only"
    assert [la["name"] for la in d["layers"]] == ["sep", "fc"]
    assert d["layers"][0]["nnz"] == 43


def test_summary_of_dense_model_has_no_compression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    s = summary(model)
    assert s.total_params == s.dense_equivalent_params == 10 * 20 + 20 + 20 * 3 + 3
    assert s.separable_params == s.separable_nnz == 0
    assert s.compression == s.fc_compression == 1
    assert s.macs == s.dense_equivalent_macs == 10 * 20 + 20 * 3


def test_summary_of_bare_separable_layer():
    layer = SeparableLinear((4, 6), (5, 3))
    s = summary(layer)
    assert [la.name for la in s.layers] == [""]
    assert (s.total_params, s.dense_equivalent_params) == (53, 375)
    assert (s.macs, s.dense_equivalent_macs) == (210, 360)


# --------------------------------------------------------------------------- VGG-16


def vgg16_macs(size: int, num_classes: int) -> int:
    """Conv and FC multiply-accumulates of VGG-16 for one ``size × size`` image, by hand."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    macs, c_in, hw = 0, 3, size
    for v in cfg:
        if v == "M":
            hw //= 2
        else:
            macs += hw * hw * v * c_in * 9
            c_in = v
    return macs + 512 * 7 * 7 * 4096 + 4096 * 4096 + 4096 * num_classes


@pytest.fixture(scope="module")
def vgg_pair():
    torch.manual_seed(0)
    dense = torchvision.models.vgg16(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    separated = separate(copy.deepcopy(dense), example_input=x)
    return dense, separated, x


def test_summary_of_separated_vgg16(vgg_pair):
    dense, separated, x = vgg_pair
    base = summary(dense, x)
    s = summary(separated, x)
    assert base.total_params == 134_301_514
    assert base.macs == vgg16_macs(64, 10)
    assert base.compression == 1
    assert s.fc_compression > 100
    assert s.compression > 1
    # The dense equivalent of the separated model is the original model.
    assert s.dense_equivalent_params == base.total_params
    assert s.dense_equivalent_macs == base.macs
    assert s.bytes_dense_equivalent_fp32 == base.bytes_dense_fp32 == 4 * base.total_params
    assert s.macs < base.macs
    assert s.separable_params == sum(p.numel() for name, p in separated.named_parameters()
                                     if name.startswith("classifier"))
    assert [la.kind for la in s.layers] == ["separable"] * 3
    assert "classifier.0" in s.table() and "512×7×7" in s.table()


@pytest.mark.parametrize("value", ["nan", "inf", "0.5", "abc"])
def test_cli_summary_bad_compression_names_the_option(value, capsys):
    """``--compression nan`` used to fail deep inside the surgery without naming the option."""
    from sstorch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["summary", "--compression", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--compression must be a finite number ≥ 1" in err and "Traceback" not in err


def test_separate_rejects_a_nan_compression():
    from sstorch.structure.surgery import separate

    with pytest.raises(ValueError, match="compression must be a finite number ≥ 1"):
        separate(nn.Sequential(nn.Linear(16, 16)), compression=float("nan"))
