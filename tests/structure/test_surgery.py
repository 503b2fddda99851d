"""Tests for :mod:`sstorch.structure.surgery`: shape planning, flatten tracing,
``separate``/``densify``.

References are built independently of the code under test: plans are checked against a brute
force over all two-mode factorizations, and "exactly separable" dense weights are explicit
``torch.kron`` chains, so ``separate(init="from_dense")`` must reproduce the model's outputs.
VGG-16 is built once per module (random init, never downloaded) and deep-copied by the tests
that modify it.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sstorch.layers.separable import SeparableLinear
from sstorch.structure.surgery import (
    SeparablePlan,
    densify,
    find_flattened_inputs,
    plan_shapes,
    separate,
)

F64 = torch.float64
VGG_FC = ("classifier.0", "classifier.3", "classifier.6")
VIT_FC_PATTERNS = ["*.attn.qkv", "*.attn.proj", "*.mlp.fc1", "*.mlp.fc2"]


# --------------------------------------------------------------------------- helpers


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def brute_force_k2(n: int, m: int, budget: int | None = None) -> tuple[int, int]:
    """(matrix rank, Σ m_k n_k) of the best two-mode plan, by enumeration.

    Best = highest ``Π min(m_k, n_k)``, then fewest factor parameters, among pairs
    ``(n1, n2) → (m1, m2)`` with input factors ≥ 2 whose rank-1 layer fits the budget.
    """
    best = None
    for n1 in divisors(n):
        n2 = n // n1
        if n1 < 2 or n2 < 2:
            continue
        for m1 in divisors(m):
            m2 = m // m1
            p1 = m1 * n1 + m2 * n2
            if budget is not None and p1 > budget:
                continue
            key = (-min(m1, n1) * min(m2, n2), p1)
            best = key if best is None else min(best, key)
    assert best is not None
    return -best[0], best[1]


def kron_weight(in_shape, out_shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """An exactly separable weight ``c · U_1 ⊗ … ⊗ U_K`` at ``nn.Linear``'s scale."""
    g = torch.Generator().manual_seed(seed)
    w = None
    for m, n in zip(out_shape, in_shape, strict=True):
        u = torch.randn(m, n, generator=g, dtype=dtype) / math.sqrt(n)  # Var(W_ij) = 1/N
        w = u if w is None else torch.kron(w, u)
    return w


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def separable_layers(model: nn.Module) -> dict[str, SeparableLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SeparableLinear)}


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """``max |actual − expected| ≤ rel · max |expected|`` (and the output is not trivial)."""
    scale = expected.abs().max()
    assert scale > 0
    err = (actual - expected).abs().max()
    assert err <= rel * scale, f"max error {err:.3e} vs output scale {scale:.3e}"


def small_vit(seed: int = 0, dtype=torch.float32) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=2, num_heads=3,
                              num_classes=10)
    return model.to(dtype)


class ViewNet(nn.Module):
    """Flattens with ``x.view(x.size(0), -1)``, as many hand-written CNNs do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


def conv_head(dropout: float = 0.0, bn: bool = False) -> nn.Sequential:
    layers = OrderedDict(conv=nn.Conv2d(3, 8, 3, padding=1))
    if bn:
        layers["bn"] = nn.BatchNorm2d(8)
    layers["act"] = nn.ReLU()
    layers["flat"] = nn.Flatten()
    if dropout:
        layers["drop"] = nn.Dropout(dropout)
    layers["fc1"] = nn.Linear(8 * 4 * 4, 24)
    layers["act2"] = nn.ReLU()
    layers["fc2"] = nn.Linear(24, 6)
    return nn.Sequential(layers)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(123))


@pytest.fixture(scope="module")
def separated_vgg(vgg, images) -> nn.Module:
    """VGG-16 with every classifier Linear separated (random init); tests must not modify it."""
    torch.manual_seed(1)
    return separate(copy.deepcopy(vgg), example_input=images[:1])


# --------------------------------------------------------------------------- plan_shapes


@pytest.mark.parametrize(
    ("n", "m", "kwargs"),
    [
        (784, 1024, {}),
        (1024, 10, {}),
        (4096, 4096, {"max_params": 1000}),
        (192, 576, {"n_modes": 3}),
        (25088, 4096, {"in_shape": (512, 7, 7)}),
        (3072, 100, {"max_params": 900}),
    ],
)
def test_plan_shape_products_match_features(n, m, kwargs):
    plan = plan_shapes(n, m, **kwargs)
    assert math.prod(plan.in_shape) == n
    assert math.prod(plan.out_shape) == m
    assert len(plan.in_shape) == len(plan.out_shape)
    assert plan.params == plan.rank * sum(
        a * b for a, b in zip(plan.out_shape, plan.in_shape, strict=True)
    )


def test_plan_784_to_1024_is_square_factors():
    plan = plan_shapes(784, 1024)
    assert (plan.in_shape, plan.out_shape, plan.rank) == ((28, 28), (32, 32), 1)
    assert plan.params == 28 * 32 * 2


@pytest.mark.parametrize(
    ("n", "m", "in_shape"),
    [
        (784, 1024, None),
        (1024, 10, None),
        (4096, 4096, None),
        (4096, 1000, None),
        (192, 576, None),
        (768, 192, None),
        (25088, 4096, (512, 7, 7)),
    ],
)
def test_plan_reaches_full_matrix_rank(n, m, in_shape):
    plan = plan_shapes(n, m, in_shape=in_shape)
    assert plan.matrix_rank == min(n, m)
    # Equivalently: no mode pairs a tall factor with a wide one.
    pairs = list(zip(plan.out_shape, plan.in_shape, strict=True))
    assert all(a <= b for a, b in pairs) or all(a >= b for a, b in pairs), pairs
    if in_shape is not None:
        assert plan.in_shape == in_shape


@pytest.mark.parametrize(
    ("n", "m", "budget"),
    [(784, 1024, None), (1024, 10, None), (4096, 1000, None), (96, 60, None), (784, 1024, 5000),
     (4096, 4096, 30000), (3072, 100, 4000), (96, 60, 200)],
)
def test_plan_matches_two_mode_brute_force(n, m, budget):
    plan = plan_shapes(n, m, max_params=budget, n_modes=2)
    p1 = sum(a * b for a, b in zip(plan.out_shape, plan.in_shape, strict=True))
    assert (plan.matrix_rank, p1) == brute_force_k2(n, m, budget)
    if budget is None:
        assert plan.rank == 1
    else:  # the rest of the budget goes to Kronecker rank, up to min_k m_k n_k
        max_rank = min(a * b for a, b in zip(plan.out_shape, plan.in_shape, strict=True))
        assert plan.rank == min(budget // p1, max_rank)


@pytest.mark.parametrize(
    ("n", "m", "kwargs"),
    [
        (784, 1024, {"max_params": 5000}),
        (4096, 4096, {"max_params": 1000}),
        (4096, 1000, {"max_params": 2000}),
        (25088, 4096, {"in_shape": (512, 7, 7), "max_params": 25088 * 4096 // 200}),
        (192, 768, {"max_params": 10_000}),
    ],
)
def test_plan_respects_and_fills_the_budget(n, m, kwargs):
    budget = kwargs["max_params"]
    plan = plan_shapes(n, m, **kwargs)
    assert plan.params <= budget
    p1 = plan.params // plan.rank
    max_rank = min(a * b for a, b in zip(plan.out_shape, plan.in_shape, strict=True))
    # One more Kronecker term would break the budget, or the rank is already maximal.
    assert plan.params + p1 > budget or plan.rank == max_rank


def test_plan_budget_spent_on_rank():
    plan = plan_shapes(784, 1024, max_params=5000)
    assert (plan.in_shape, plan.out_shape, plan.rank, plan.params) == ((28, 28), (32, 32), 2,
                                                                        2 * 1792)
    vgg_fc0 = plan_shapes(25088, 4096, in_shape=(512, 7, 7), max_params=25088 * 4096 // 200)
    assert vgg_fc0.rank > 1


def test_plan_adds_modes_when_two_cannot_fit():
    with pytest.raises(ValueError, match="max_params=1000"):
        plan_shapes(4096, 4096, max_params=1000, n_modes=2)  # the smallest K = 2 plan is 8192
    plan = plan_shapes(4096, 4096, max_params=1000)
    assert len(plan.in_shape) == 3
    assert plan.params <= 1000
    assert plan.matrix_rank == 4096


def test_plan_fixed_rank_and_modes_are_honoured():
    plan = plan_shapes(784, 1024, rank=3)
    assert plan.rank == 3 and plan.params == 3 * 1792
    plan = plan_shapes(4096, 4096, n_modes=4)
    assert len(plan.in_shape) == 4 and plan.matrix_rank == 4096
    with pytest.raises(ValueError, match="max_params"):
        plan_shapes(784, 1024, rank=3, max_params=5000, n_modes=2)  # 3 × 1792 > 5000
    plan = plan_shapes(784, 1024, rank=3, max_params=5000)  # so K grows instead
    assert plan.rank == 3 and len(plan.in_shape) == 3 and plan.params <= 5000


def test_plan_impossible_budget_raises_helpfully():
    with pytest.raises(ValueError, match=r"4096 → 4096.*max_params=10.*smallest found"):
        plan_shapes(4096, 4096, max_params=10)


@pytest.mark.parametrize("max_params", [None, 500])
def test_plan_prime_in_features_raises_helpfully(max_params):
    with pytest.raises(ValueError, match=r"cannot factorize 7919 → 10.*shapes="):
        plan_shapes(7919, 10, max_params=max_params)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((784, 1024), {"in_shape": (28, 29)}, "in_shape"),
        ((0, 10), {}, "positive"),
        ((784, 1024), {"max_params": 0}, "max_params"),
        ((784, 1024), {"rank": 0}, "rank"),
    ],
)
def test_plan_bad_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_shapes(*args, **kwargs)


def test_plan_matrix_rank_property():
    assert SeparablePlan((4, 6), (5, 3), 1, 38).matrix_rank == 4 * 3
    assert SeparablePlan((512, 7, 7), (256, 4, 4), 1, 0).matrix_rank == 256 * 4 * 4


# --------------------------------------------------------------------------- find_flattened_inputs


def test_find_flattened_inputs_vgg16(vgg):
    assert find_flattened_inputs(vgg, torch.randn(1, 3, 64, 64)) == {"classifier.0": (512, 7, 7)}
    assert not vgg.training  # mode left alone


def test_find_flattened_inputs_nn_flatten():
    model = conv_head()
    model.train()
    found = find_flattened_inputs(model, torch.randn(2, 3, 4, 4))
    assert found == {"fc1": (8, 4, 4)}  # fc2 is fed by a ReLU of a Linear: not reported
    assert model.training


def test_find_flattened_inputs_view():
    assert find_flattened_inputs(ViewNet(), torch.randn(3, 3, 4, 4)) == {"fc1": (6, 4, 4)}


def test_find_flattened_inputs_ignores_token_linears():
    model = small_vit()
    assert find_flattened_inputs(model, torch.randn(2, 3, 32, 32)) == {}


def test_find_flattened_inputs_same_in_train_and_eval():
    model = conv_head(dropout=0.5)
    x = torch.randn(2, 3, 4, 4)
    assert find_flattened_inputs(model.eval(), x) == {"fc1": (8, 4, 4)}
    assert find_flattened_inputs(model.train(), x) == {"fc1": (8, 4, 4)}


def test_separate_probe_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = conv_head(bn=True).train()
    before = copy.deepcopy(model.bn.state_dict())
    separate(model, example_input=torch.randn(4, 3, 4, 4))
    assert isinstance(model.fc1, SeparableLinear)
    for key, value in model.bn.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


# --------------------------------------------------------------------------- separate


def test_separate_vgg16_default(vgg, separated_vgg, images):
    seps = separable_layers(separated_vgg)
    assert set(seps) == set(VGG_FC)
    fc0 = seps["classifier.0"]
    assert fc0.in_shape == (512, 7, 7)
    assert fc0.flatten and fc0.out_features == 4096
    for name, layer in seps.items():
        dense = vgg.get_submodule(name)
        assert (layer.in_features, layer.out_features) == (dense.in_features, dense.out_features)
        assert not layer.training  # the eval-mode model stays in eval mode
    with torch.no_grad():
        out = separated_vgg(images)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    expected = (n_params(vgg) - sum(n_params(vgg.get_submodule(n)) for n in VGG_FC)
                + sum(layer.n_params for layer in seps.values()))
    assert n_params(separated_vgg) == expected
    assert n_params(separated_vgg) < n_params(vgg) - 100_000_000
    assert n_params(vgg) == 134_301_514  # the original was not touched


def test_separate_compression_target_per_layer(vgg, images):
    model = separate(copy.deepcopy(vgg), compression=50, example_input=images[:1])
    seps = separable_layers(model)
    assert set(seps) == set(VGG_FC)
    for name, layer in seps.items():
        dense = n_params(vgg.get_submodule(name))
        assert dense / layer.n_params >= 50, name
    assert seps["classifier.0"].in_shape == (512, 7, 7)
    assert seps["classifier.0"].rank > 1  # the budget is spent on Kronecker rank


def test_separate_max_params_budget(vgg, images):
    model = separate(copy.deepcopy(vgg), "classifier.3", max_params=1000)
    layer = model.get_submodule("classifier.3")
    assert sum(p.numel() for p in layer.factors) <= 1000
    assert layer.n_modes == 3


def test_separate_shapes_override(vgg):
    model = separate(
        copy.deepcopy(vgg), "classifier.*", rank=2,
        shapes={"classifier.0": ((49, 512), (64, 64)), "classifier.3": ((4, 1024), (8, 512), 3)},
    )
    fc0, fc3, fc6 = (model.get_submodule(n) for n in VGG_FC)
    assert (fc0.in_shape, fc0.out_shape, fc0.rank) == ((49, 512), (64, 64), 2)
    assert (fc3.in_shape, fc3.out_shape, fc3.rank) == ((4, 1024), (8, 512), 3)
    assert isinstance(fc6, SeparableLinear) and fc6.rank == 2  # planned, with the fixed rank


def test_separate_include_exclude_globs(vgg):
    model = separate(copy.deepcopy(vgg), include="classifier.*", exclude="classifier.6")
    assert set(separable_layers(model)) == {"classifier.0", "classifier.3"}
    assert type(model.classifier[6]) is nn.Linear
    model = separate(copy.deepcopy(vgg), include=["classifier.3", "classifier.6"])
    assert set(separable_layers(model)) == {"classifier.3", "classifier.6"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"include": "features.*"}, r"'features\.\*' matches no nn\.Linear.*classifier\.0"),
        ({"exclude": ["classifier.6", "head"]}, r"'head' matches no nn\.Linear.*classifier\.3"),
        ({"shapes": {"classifier.9": ((2, 2), (2, 2))}}, r"classifier\.9.*classifier\.0"),
        ({"init": "svd"}, "init"),
        ({"compression": 0.5}, "compression"),
        ({"compression": 10, "max_params": 1000}, "not both"),
        ({"include": "classifier.6", "shapes": {"classifier.6": ((64, 32), (2, 5))}},
         "do not match"),
    ],
)
def test_separate_rejects_bad_arguments(vgg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        separate(vgg, **kwargs)
    assert not separable_layers(vgg)  # rejected before any replacement


def test_separate_skips_unplannable_wildcard_match_loudly():
    model = nn.Sequential(nn.Linear(12, 13), nn.ReLU(), nn.Linear(13, 8))  # 13 is prime
    with pytest.warns(UserWarning, match="skipping 2"):
        separate(model)
    assert isinstance(model[0], SeparableLinear) and type(model[2]) is nn.Linear
    with pytest.raises(ValueError, match="cannot factorize 13"):
        separate(nn.Sequential(nn.Linear(13, 8)), include="0")


def test_separate_keeps_dtype_and_per_layer_mode():
    model = conv_head().to(F64)
    model.fc1.eval()
    separate(model, example_input=torch.randn(2, 3, 4, 4, dtype=F64))
    assert model.fc1.factors[0].dtype == F64 and model.fc2.factors[0].dtype == F64
    assert not model.fc1.training and model.fc2.training
    assert model.fc1.in_shape == (8, 4, 4)


def test_separate_keeps_multihead_attention_working():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                       batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    try:
        separate(layer)
    except ValueError:
        return  # refusing up front, with a message, is acceptable too
    assert layer(x).shape == (2, 5, 16)


# --------------------------------------------------------------------------- from_dense: exactness


def test_from_dense_preserves_vgg16_outputs(vgg, images):
    # Shapes chosen for a cheap nearest_kronecker: (512, 7, 7) → (256, 4, 4) works too but its
    # HOSVD init (full SVDs of the 102M-entry rearranged tensor) takes about a minute on CPU.
    shapes = {
        "classifier.0": ((512, 7, 7), (2048, 2, 1)),
        "classifier.3": ((4, 1024), (4, 1024)),
        "classifier.6": ((64, 64), (2, 5)),
    }
    model = copy.deepcopy(vgg)
    with torch.no_grad():
        for seed, (name, (ins, outs)) in enumerate(shapes.items()):
            model.get_submodule(name).weight.copy_(kron_weight(ins, outs, seed))
        expected = model(images)
    separate(model, "classifier.*", shapes=shapes, init="from_dense", example_input=images[:1])
    seps = separable_layers(model)
    assert set(seps) == set(VGG_FC)
    for name, (ins, outs) in shapes.items():
        assert (seps[name].in_shape, seps[name].out_shape) == (ins, outs)
        assert seps[name].approx_error < 1e-6, name  # fp32 rounding of an exact Kronecker
    with torch.no_grad():
        actual = model(images)
    assert_close_to_scale(actual, expected, rel=1e-4)


@pytest.mark.parametrize("n_modes", [None, 3])
def test_from_dense_preserves_vit_outputs(n_modes):
    model = small_vit(dtype=F64).eval()
    x = torch.randn(2, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(5))
    chosen = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"]
    assert len(chosen) == 8
    with torch.no_grad():
        for seed, name in enumerate(chosen):
            lin = model.get_submodule(name)
            plan = plan_shapes(lin.in_features, lin.out_features, n_modes=n_modes)
            lin.weight.copy_(kron_weight(plan.in_shape, plan.out_shape, seed, dtype=F64))
        expected = model(x)
    separate(model, VIT_FC_PATTERNS, n_modes=n_modes, init="from_dense")
    seps = separable_layers(model)
    assert sorted(seps) == sorted(chosen)
    assert type(model.head) is nn.Linear
    for name, layer in seps.items():
        assert layer.n_modes == (n_modes or 2)
        assert layer.approx_error < 1e-10, name
    with torch.no_grad():
        actual = model(x)
    assert_close_to_scale(actual, expected, rel=1e-9)


def test_from_dense_reports_error_for_unstructured_weights():
    model = small_vit()
    separate(model, ["head", "blocks.0.mlp.fc1"], init="from_dense")
    # Random dense weights are far from any Kronecker product.
    assert model.head.approx_error > 0.5
    assert model.blocks[0].mlp.fc1.approx_error > 0.5


# --------------------------------------------------------------------------- densify


def test_densify_inverts_separate_on_vgg16(separated_vgg, images):
    model = copy.deepcopy(separated_vgg)
    with torch.no_grad():
        expected = model(images)
    assert densify(model) is model
    assert not separable_layers(model)
    for name, (n, m) in zip(VGG_FC, [(25088, 4096), (4096, 4096), (4096, 10)], strict=True):
        lin = model.get_submodule(name)
        assert type(lin) is nn.Linear and (lin.in_features, lin.out_features) == (n, m)
        assert not lin.training
    with torch.no_grad():
        actual = model(images)
    assert_close_to_scale(actual, expected, rel=1e-4)


def test_densify_inverts_separate_on_vit():
    model = separate(small_vit(dtype=F64), VIT_FC_PATTERNS).eval()
    x = torch.randn(2, 3, 32, 32, dtype=F64)
    with torch.no_grad():
        expected = model(x)
    densify(model)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 9
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)


def test_densify_shape_preserving_layer():
    torch.manual_seed(0)
    model = nn.Sequential(SeparableLinear((4, 6), (5, 3)).to(F64), nn.Flatten(-2),
                          nn.Linear(15, 7).to(F64))
    x = torch.randn(2, 3, 4, 6, dtype=F64)
    with torch.no_grad():
        expected = model(x)
        mid_expected = model[0](x)
    densify(model)
    assert not separable_layers(model)
    assert any(type(m) is nn.Linear and m.in_features == 24 for m in model[0].modules())
    with torch.no_grad():
        mid = model[0](x)
        assert mid.shape == (2, 3, 5, 3)
        torch.testing.assert_close(mid, mid_expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
        assert model[0](x[0, 0]).shape == (5, 3)  # no batch dimensions at all


@pytest.mark.parametrize("flatten", [True, False])
def test_densify_bare_layer_returns_replacement(flatten):
    torch.manual_seed(0)
    sep = SeparableLinear((4, 6), (5, 3), rank=2, flatten=flatten).to(F64)
    x = torch.randn(7, 24, dtype=F64) if flatten else torch.randn(7, 4, 6, dtype=F64)
    with torch.no_grad():
        expected = sep(x)
    dense = densify(sep)
    assert dense is not sep and not isinstance(dense, SeparableLinear)
    assert isinstance(sep, SeparableLinear) and len(sep.factors) == 2  # the original is intact
    if flatten:
        assert type(dense) is nn.Linear and dense.weight.shape == (15, 24)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), expected, rtol=1e-12, atol=1e-12)


def test_densify_applies_pruning_masks():
    torch.manual_seed(0)
    sep = SeparableLinear((4, 6), (5, 3), flatten=True).to(F64)
    mask = torch.ones_like(sep.factors[1])
    mask[0, :, :3] = 0
    sep.register_buffer("mask_1", mask)
    x = torch.randn(3, 24, dtype=F64)
    with torch.no_grad():
        expected = sep(x)
        unmasked = x @ torch.kron(sep.factors[0][0], sep.factors[1][0]).T + sep.bias
        dense = densify(sep)
        assert (dense.weight.reshape(5, 3, 4, 6)[:, :, :, :3] == 0).all()
        torch.testing.assert_close(dense(x), expected, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(dense(x), unmasked)


# --------------------------------------------------------------------------- training


def test_gradients_reach_separable_factors(separated_vgg, images):
    model = copy.deepcopy(separated_vgg).train()
    loss = nn.functional.cross_entropy(model(images), torch.tensor([1, 7]))
    loss.backward()
    for name, layer in separable_layers(model).items():
        for u in layer.factors:
            assert u.grad is not None and torch.isfinite(u.grad).all(), name
            assert u.grad.abs().sum() > 0, name
        assert layer.bias.grad is not None


def test_separated_vit_trains_one_sgd_step():
    model = separate(small_vit(seed=3), VIT_FC_PATTERNS, compression=8)
    assert len(separable_layers(model)) == 8
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "blocks.0.mlp.fc1.factors.0" in changed and "blocks.1.attn.qkv.factors.1" in changed
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_load_dense_recovers_an_exact_kronecker_sum_and_names_misfits():
    from sstorch.functional.kronecker import kron_sum
    from sstorch.structure.init import load_dense_state as load_dense_

    g = torch.Generator().manual_seed(0)
    factors = [torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 6, generator=g)]
    w = kron_sum(factors)  # (15, 24), an exact rank-2 Kronecker sum
    model = nn.Sequential(nn.Flatten(), SeparableLinear((4, 6), (3, 5), rank=2, flatten=True),
                          nn.ReLU(), nn.Linear(15, 2))
    state = {"1.weight": w, "1.bias": torch.randn(15, generator=g),
             "3.weight": torch.randn(2, 15, generator=g), "3.bias": torch.zeros(2)}
    errors = load_dense_(model, state)
    assert list(errors) == ["1"] and errors["1"] < 1e-6
    torch.testing.assert_close(model[1].to_dense().detach(), w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[1].bias.detach(), state["1.bias"])
    torch.testing.assert_close(model[3].weight.detach(), state["3.weight"])
    with pytest.raises(ValueError, match=r"1: dense weight \(15, 20\) does not fit"):
        load_dense_(model, {**state, "1.weight": torch.randn(15, 20)})
    with pytest.raises(ValueError, match=r"missing 3\.bias"):
        load_dense_(model, {k: v for k, v in state.items() if k != "3.bias"})
