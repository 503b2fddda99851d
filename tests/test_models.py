"""Model zoo: MLP, VGG-16 and ViT, dense and separable, built from a ModelConfig."""

from __future__ import annotations

import fnmatch

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sstorch import SeparableLinear
from sstorch.config import ConfigError, ModelConfig
from sstorch.models import MODELS, ImageClassifier, Normalize, SeparablePatchEmbed, build_model

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]
SHAPE_IDS = ["28x28x1", "32x32x3", "8x8x1"]
# Hidden tensors with as many modes as each image's non-singleton dims.
HIDDEN = {(1, 28, 28): [[32, 32], [32, 32]], (3, 32, 32): [[4, 16, 16], [4, 16, 16]],
          (1, 8, 8): [[8, 8]]}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(name: str, separable: bool, shape: tuple[int, ...], **kw) -> ModelConfig:
    base: dict = {"name": name, "structure": "separable" if separable else "dense"}
    if name == "mlp":
        base["hidden"] = HIDDEN[shape]
    elif name == "vgg16":
        base |= {"width": 0.0625, "fc_hidden": 32}
    elif name == "vit":
        base |= {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 4}
    cfg = ModelConfig.for_name(name)(**(base | kw))
    cfg.validate()
    return cfg


def build(cfg: ModelConfig, shape: tuple[int, ...], classes: int = 10) -> ImageClassifier:
    c = shape[0]
    return build_model(cfg, classes, shape, [0.5] * c, [0.25] * c)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def separable_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, SeparableLinear)}


def linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


# ---------------------------------------------------------------------------------------------
# Every model, every shape


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("name", ["mlp", "vit"])
def test_output_shape_and_separable_is_smaller(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    dense = build(small_cfg(name, False, shape), shape, classes=7)
    sep = build(small_cfg(name, True, shape), shape, classes=7)
    x = torch.rand(3, *shape)
    for model in (dense, sep):
        model.eval()
        y = model(x)
        assert y.shape == (3, 7)
        assert torch.isfinite(y).all()
    assert not separable_names(dense)
    assert separable_names(sep)
    assert n_params(sep) < n_params(dense)


@pytest.mark.parametrize("variant", ["cifar", "imagenet"])
def test_vgg16_output_shape_and_separable_is_smaller(variant: str) -> None:
    shape = (3, 32, 32)
    dense = build(small_cfg("vgg16", False, shape, variant=variant), shape, classes=5)
    sep = build(small_cfg("vgg16", True, shape, variant=variant), shape, classes=5)
    x = torch.rand(2, *shape)
    for model in (dense, sep):
        model.eval()
        assert model(x).shape == (2, 5)
    assert not separable_names(dense)
    assert separable_names(sep) == {"net.classifier.0", "net.classifier.3"}
    assert n_params(sep) < n_params(dense)
    # The convolutional trunk is identical; only the head shrinks.
    trunk = lambda m: n_params(m.net.features)  # noqa: E731
    assert trunk(sep) == trunk(dense)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)], ids=["28x28x1", "8x8x1"])
@pytest.mark.parametrize("separable", [False, True], ids=["dense", "sep"])
def test_vgg16_small_images_are_padded_to_32(shape: tuple[int, ...], separable: bool) -> None:
    """Five 2×2 max-pools need ≥ 32 pixels: smaller images are zero-padded to 32×32 inside the
    model, so 28×28 (MNIST family) and 8×8 (digits) build and classify (before the padding, the
    dense model raised "Output size is too small" in the 5th MaxPool and the separable one
    batch-norm's "Expected more than 1 value per channel" from the shape-probing forward)."""
    model = build(small_cfg("vgg16", separable, shape), shape).eval()
    assert isinstance(model.net.features[0], torch.nn.ZeroPad2d)
    assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_models_registry() -> None:
    assert set(MODELS) == {"mlp", "vgg16", "vit"}


# ---------------------------------------------------------------------------------------------
# MLP


def test_separable_mlp_maps_image_modes_and_counts_params() -> None:
    shape = (1, 28, 28)
    sep = build(small_cfg("mlp", True, shape), shape)
    dense = build(small_cfg("mlp", False, shape), shape)
    layers = [m for m in sep.net if isinstance(m, SeparableLinear)]
    assert [(m.in_shape, m.out_shape) for m in layers] == [((28, 28), (32, 32)),
                                                           ((32, 32), (32, 32))]
    assert all(m.flatten and m.rank == 1 for m in layers)
    head = sep.net[-1]
    assert type(head) is nn.Linear and (head.in_features, head.out_features) == (1024, 10)
    # 28·32·2 + 1024 + 32·32·2 + 1024 + 1024·10 + 10
    assert n_params(sep) == 16_138
    widths = [(m.in_features, m.out_features) for m in dense.net if isinstance(m, nn.Linear)]
    assert widths == [(784, 1024), (1024, 1024), (1024, 10)]
    assert n_params(dense) == 1_863_690


def test_separable_mlp_cifar_uses_channel_mode() -> None:
    shape = (3, 32, 32)
    sep = build(small_cfg("mlp", True, shape), shape)
    first = next(m for m in sep.net if isinstance(m, SeparableLinear))
    assert first.in_shape == (3, 32, 32) and first.out_shape == (4, 16, 16)


def test_separable_mlp_equals_its_dense_weights() -> None:
    """The separable layers are drop-ins: the net equals Flatten → x @ Wᵀ + b per layer."""
    shape = (1, 8, 8)
    model = build(small_cfg("mlp", True, shape, hidden=[[8, 8], [4, 4]]), shape).eval()
    x = torch.rand(4, *shape)
    h = ((x - 0.5) / 0.25).flatten(1)
    for m in model.net:
        if isinstance(m, SeparableLinear):
            h = h @ m.to_dense().T + m.bias
        elif isinstance(m, (nn.Linear, nn.ReLU)):
            h = m(h)
    torch.testing.assert_close(model(x), h, rtol=1e-5, atol=1e-5)


def test_mlp_rank_and_separate_head() -> None:
    shape = (1, 28, 28)
    base = build(small_cfg("mlp", True, shape), shape)
    model = build(small_cfg("mlp", True, shape, rank=2, separate_head=True), shape)
    layers = [m for m in model.net if isinstance(m, SeparableLinear)]
    assert len(layers) == 3
    assert [m.rank for m in layers] == [2, 2, 1]
    assert layers[-1].in_shape == (32, 32) and layers[-1].out_features == 10
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert n_params(model) < n_params(base)  # the 10,250-parameter head shrinks the most


def test_dense_mlp_accepts_integer_widths_and_dropout() -> None:
    shape = (1, 8, 8)
    model = build(small_cfg("mlp", False, shape, hidden=[20, [2, 5]], dropout=0.5), shape)
    widths = [(m.in_features, m.out_features) for m in model.net if isinstance(m, nn.Linear)]
    assert widths == [(64, 20), (20, 10), (10, 10)]
    assert sum(isinstance(m, nn.Dropout) for m in model.net) == 2


@pytest.mark.parametrize(("shape", "hidden"), [
    ((1, 28, 28), [[4, 16, 16]]),
    ((1, 28, 28), [[32, 32], [1024]]),
    ((3, 32, 32), [[32, 32]]),
    ((1, 8, 8), [64]),
])
def test_separable_mlp_hidden_with_wrong_mode_count(shape, hidden) -> None:
    with pytest.raises(ConfigError, match=r"model\.hidden shape .* modes"):
        build(small_cfg("mlp", True, shape, hidden=hidden), shape)


# ---------------------------------------------------------------------------------------------
# VGG-16


def test_separable_vgg16_imagenet_head_takes_feature_map_modes() -> None:
    shape = (3, 32, 32)
    cfg = small_cfg("vgg16", True, shape, variant="imagenet", fc_hidden=64)
    model = build(cfg, shape)
    first, second = model.net.classifier[0], model.net.classifier[3]
    assert isinstance(first, SeparableLinear) and isinstance(second, SeparableLinear)
    channels = model.net.features[-4].out_channels  # last conv of the trunk
    assert channels == 32
    assert first.in_shape == (channels, 7, 7)
    assert first.in_features == 32 * 7 * 7 and first.out_features == 64
    assert second.in_features == 64 and second.out_features == 64
    assert type(model.net.classifier[6]) is nn.Linear  # head kept dense by default


def test_vgg16_cifar_variant_head_and_separate_head() -> None:
    shape = (3, 32, 32)
    dense = build(small_cfg("vgg16", False, shape), shape)
    assert dense.net.classifier[0].in_features == 32  # 512·w × 1 × 1
    sep = build(small_cfg("vgg16", True, shape, separate_head=True), shape)
    assert separable_names(sep) == {"net.classifier.0", "net.classifier.3", "net.classifier.6"}
    assert sep.net.classifier[6].out_features == 10


def test_vgg16_width_scales_channels() -> None:
    shape = (3, 32, 32)
    half = build(small_cfg("vgg16", False, shape, width=0.125), shape)
    convs = [m.out_channels for m in half.net.features if isinstance(m, nn.Conv2d)]
    assert convs == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]


def test_separable_vgg16_build_leaves_batchnorm_untouched() -> None:
    """Building the separable model must not train BN on the shape-probing zeros batch.

    Bug: models._vgg16 calls separate(..., example_input=zeros) on a model in train mode, so
    every BatchNorm gets num_batches_tracked = 1 and running stats moved towards the zero batch.
    """
    shape = (3, 32, 32)
    model = build(small_cfg("vgg16", True, shape), shape)
    assert model.training
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 0, name
            torch.testing.assert_close(m.running_mean, torch.zeros_like(m.running_mean))
            torch.testing.assert_close(m.running_var, torch.ones_like(m.running_var))


def test_vgg16_compression_targets_each_layer() -> None:
    shape = (3, 32, 32)
    model = build(small_cfg("vgg16", True, shape, variant="imagenet", fc_hidden=64,
                            compression=8.0), shape)
    layers = [m for m in model.modules() if isinstance(m, SeparableLinear)]
    assert len(layers) == 2
    assert all(m.compression >= 8.0 for m in layers)


# ---------------------------------------------------------------------------------------------
# ViT


VIT_GROUPS = {
    "mlp": ["*.mlp.fc1", "*.mlp.fc2"],
    "attn": ["*.attn.qkv", "*.attn.proj"],
    "head": ["head"],
}


@pytest.mark.parametrize("groups", [["mlp"], ["attn"], ["head"], ["mlp", "attn"],
                                    ["mlp", "attn", "head"]])
def test_vit_separable_groups_select_exactly_their_linears(groups: list[str]) -> None:
    shape = (3, 32, 32)
    dense = build(small_cfg("vit", False, shape), shape).net
    model = build(small_cfg("vit", True, shape, separable_groups=groups), shape).net
    all_linears = linear_names(dense)
    expected = {n for n in all_linears
                if any(fnmatch.fnmatchcase(n, p) for g in groups for p in VIT_GROUPS[g])}
    depth = 2
    assert len(expected) == sum({"mlp": 2 * depth, "attn": 2 * depth, "head": 1}[g]
                                for g in groups)
    assert separable_names(model) == expected
    assert linear_names(model) == all_linears - expected
    assert isinstance(model.patch_embed.proj, nn.Conv2d)
    for name in expected:  # same in/out features as the dense Linear they replace
        lin, sep = dense.get_submodule(name), model.get_submodule(name)
        assert (sep.in_features, sep.out_features) == (lin.in_features, lin.out_features)
        assert sep.flatten


def test_vit_dense_ignores_separable_groups() -> None:
    shape = (3, 32, 32)
    model = build(small_cfg("vit", False, shape, separable_groups=["mlp", "attn", "patch"]),
                  shape)
    assert not separable_names(model)
    assert isinstance(model.net.patch_embed.proj, nn.Conv2d)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_vit_patch_group_uses_separable_patch_embed(shape: tuple[int, ...]) -> None:
    model = build(small_cfg("vit", True, shape, separable_groups=["patch"]), shape).net
    embed = model.patch_embed.proj
    assert isinstance(embed, SeparablePatchEmbed)
    assert separable_names(model) == {"patch_embed.proj.proj"}
    channels, p = shape[0], 4
    assert embed.proj.in_shape == tuple(d for d in (channels, p, p) if d > 1)
    assert embed.proj.out_features == 48
    assert model(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize(("channels", "patch", "size", "dim"), [
    (3, 4, 16, 48), (1, 4, 8, 48), (3, 2, 8, 12), (2, 4, 12, 20),
])
def test_separable_patch_embed_equals_equivalent_conv(channels, patch, size, dim) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, dim, patch, stride=patch)
    embed = SeparablePatchEmbed(conv)
    weight = embed.proj.to_dense().detach()  # (D, C·p·p), the patch flattened as (c, i, j)
    assert weight.shape == (dim, channels * patch * patch)
    x = torch.randn(3, channels, size, size)
    expected = F.conv2d(x, weight.reshape(dim, channels, patch, patch), embed.proj.bias.detach(),
                        stride=patch)
    out = embed(x)
    assert out.shape == (3, dim, size // patch, size // patch)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_separable_patch_embed_rejects_overlapping_conv() -> None:
    with pytest.raises(ValueError, match="kernel = stride"):
        SeparablePatchEmbed(nn.Conv2d(3, 8, 4, stride=2))
    with pytest.raises(ValueError, match="kernel = stride"):
        SeparablePatchEmbed(nn.Conv2d(3, 8, 4, stride=4, padding=1))


def test_vit_compression_targets_each_layer() -> None:
    shape = (3, 32, 32)
    model = build(small_cfg("vit", True, shape, compression=4.0, separable_groups=["mlp"]), shape)
    layers = [m for m in model.modules() if isinstance(m, SeparableLinear)]
    assert len(layers) == 4
    assert all(m.compression >= 4.0 for m in layers)


# ---------------------------------------------------------------------------------------------
# Normalization and input checks


@pytest.mark.parametrize("name", ["mlp", "vgg16", "vit"])
def test_normalize_is_inside_the_model(name: str) -> None:
    shape = (3, 32, 32)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    model = build_model(small_cfg(name, True, shape), 10, shape, mean, std).eval()
    x = torch.rand(2, *shape)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.net((x - m) / s))
    seen: list[torch.Tensor] = []
    handle = model.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    model(x)
    handle.remove()
    (inner,) = seen
    torch.testing.assert_close(inner, (x - m) / s)  # the net sees normalized pixels ...
    assert not torch.allclose(inner, x)  # ... which differ from the raw ones
    assert isinstance(model.normalize, Normalize)
    buffers = dict(model.named_buffers())
    assert "normalize.mean" in buffers and "normalize.std" in buffers  # moves with .to(device)


@pytest.mark.parametrize("bad", [(2, 1, 28, 28), (2, 3, 28, 28), (3, 32, 32), (2, 3, 32, 32, 1)])
def test_wrong_input_shape(bad: tuple[int, ...]) -> None:
    shape = (3, 32, 32)
    model = build(small_cfg("mlp", False, shape), shape)
    with pytest.raises(ValueError, match=r"model expects images \(B, 3, 32, 32\)"):
        model(torch.rand(*bad))


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'.*mlp, vgg16, vit"):
        build(ModelConfig(name="resnet"), (3, 32, 32))
