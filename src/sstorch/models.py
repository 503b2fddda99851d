"""Model zoo: MLP, VGG-16 and ViT, each dense or separable from one config switch.

Every model takes images in ``[0, 1]`` and normalizes inside (:class:`Normalize`), so attacks
see the true pixel box. Separable forms are made from the dense ones by
:func:`sstorch.structure.surgery.separate`, never by a second copy of the architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sstorch.config import ConfigError, MLPConfig, ModelConfig, VGG16Config, ViTConfig
from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.magnitude import apply_linear_masks_, sync_linear_masks_
from sstorch.structure.init import factorize_mlp
from sstorch.structure.surgery import plan_shapes, separate

__all__ = ["MODELS", "ImageClassifier", "Normalize", "build_model"]


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel; inputs stay in [0, 1] outside the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _rezero_pruned(module: nn.Module, incompatible_keys: object) -> None:
    apply_linear_masks_(module)


class ImageClassifier(nn.Module):
    """``net(normalize(x))`` for ``x`` of shape ``(B, C, H, W)`` in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 image_shape: Sequence[int]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.image_shape = tuple(image_shape)
        # Pruned nn.Linear layers carry weight_mask buffers (sstorch.pruning.magnitude): the state
        # being loaded decides which layers are pruned; after loading their masked weights are
        # zeroed and HYDRA's score phase gets its ScoredLinear layers back.
        self.register_load_state_dict_post_hook(_rezero_pruned)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        sync_linear_masks_(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"model expects images (B, {', '.join(map(str, self.image_shape))})"
                             f", got {tuple(x.shape)}")
        return self.net(self.normalize(x))


def _mlp(cfg: MLPConfig, num_classes: int, image_shape: Sequence[int]) -> nn.Module:
    """``Flatten → [Linear → ReLU]* → Linear``; the separable form keeps hidden tensors.

    ``cfg.hidden`` lists hidden shapes, e.g. ``[[32, 32], [32, 32]]``: the dense MLP uses their
    products as widths (784-1024-1024-10 on Fashion-MNIST), the separable one maps the image's
    modes (28, 28) → (32, 32) → (32, 32) by mode products. ``cfg.structure`` lowrank, tucker
    or tt swaps every Linear, the head included, for a comparison layer
    (:mod:`sstorch.layers.lowrank`, :mod:`sstorch.layers.tensorized`): low rank ``W = A B`` of
    rank ``cfg.rank``, or a Tucker / TT weight on the same modes as the separable layers (the
    head's from :func:`plan_shapes`, e.g. (32, 32) → (2, 5)).
    """
    hidden = [tuple(h) if isinstance(h, (list, tuple)) else (int(h),) for h in cfg.hidden]
    widths = [math.prod(h) for h in hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    prev = math.prod(image_shape)
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    net = nn.Sequential(*layers)
    if cfg.structure == "lowrank":  # every Linear W = A B (sstorch.layers.lowrank)
        sizes = {n: ((m.in_features,), (m.out_features,)) for n, m in net.named_modules()
                 if isinstance(m, nn.Linear)}
        return factorize_mlp(net, sizes, "lowrank", cfg.rank)
    if cfg.structure == "dense":
        return net
    factorized_head = cfg.separate_head or cfg.structure != "separable"
    shapes = _mode_shapes(net, hidden, image_shape, num_classes, head=factorized_head)
    if cfg.structure != "separable":  # tucker / tt on the same modes as the separable layers
        return factorize_mlp(net, shapes, cfg.structure, cfg.rank)
    head = list(shapes)[-1] if factorized_head else None  # a separable head has rank 1
    return separate(net, list(shapes), shapes={n: (i, o, 1 if n == head else cfg.rank)
                                               for n, (i, o) in shapes.items()})


def _mode_shapes(net: nn.Module, hidden: list[tuple[int, ...]], image_shape: Sequence[int],
                 num_classes: int, head: bool) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{Linear name: (in modes, out modes)}``: the image's modes → the hidden shapes, and with
    ``head`` the classifier's modes from :func:`plan_shapes` (e.g. (32, 32) → (2, 5))."""
    in_modes = tuple(d for d in image_shape if d > 1)
    linear_names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    shapes = {}
    prev_shape = in_modes
    for name, h in zip(linear_names[:-1], hidden, strict=True):
        if len(h) != len(prev_shape):
            raise ConfigError(
                f"model.hidden shape {list(h)} has {len(h)} modes but its input "
                f"{list(prev_shape)} has {len(prev_shape)}; give every hidden shape as many "
                f"modes as the image's non-singleton dims {list(in_modes)}"
            )
        shapes[name] = (prev_shape, h)
        prev_shape = h
    if head:
        plan = plan_shapes(math.prod(prev_shape), num_classes, in_shape=prev_shape)
        shapes[linear_names[-1]] = (plan.in_shape, plan.out_shape)
    return shapes


_VGG16_CHANNELS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                   512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg16(cfg: VGG16Config, num_classes: int, image_shape: Sequence[int]) -> nn.Module:
    """VGG-16 with batch norm; ``width`` scales every conv. Head by ``variant``:

    * ``cifar``: the 512·w×1×1 map (32×32 input) → fc_hidden → fc_hidden → classes;
    * ``imagenet``: adaptive pool to 7×7, 512·w·7·7 → fc_hidden → fc_hidden → classes
      (fc_hidden = 4096 is torchvision's head). The separable head takes the map's modes.

    Images smaller than 32×32 (28×28 MNIST-family) are zero-padded to 32×32 first (after
    normalization, so the pad is the dataset mean).
    """
    layers: list[nn.Module] = []
    h, w = image_shape[1:]
    if min(h, w) < 32:  # e.g. 28×28 Fashion-MNIST: zero-pad to 32×32 for the five poolings
        ph, pw = max(0, 32 - h), max(0, 32 - w)
        layers.append(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
    c_in = image_shape[0]
    for v in _VGG16_CHANNELS:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            c = max(1, round(int(v) * cfg.width))
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    spatial = 7 if cfg.variant == "imagenet" else 1
    head = nn.Sequential(
        nn.Linear(c_in * spatial * spatial, cfg.fc_hidden), nn.ReLU(inplace=True),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.fc_hidden, cfg.fc_hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
        nn.Linear(cfg.fc_hidden, num_classes),
    )
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(*layers))
    net.add_module("pool", nn.AdaptiveAvgPool2d((spatial, spatial)))
    net.add_module("flatten", nn.Flatten())
    net.add_module("classifier", head)
    if cfg.separable:
        include = ["classifier.0", "classifier.3"] + (["classifier.6"] if cfg.separate_head
                                                       else [])
        example = torch.zeros(1, *image_shape)
        separate(net, include, compression=cfg.compression,
                 rank=None if cfg.compression else cfg.rank, example_input=example)
    return net


class SeparablePatchEmbed(nn.Module):
    """A ViT patch embedding (conv with kernel = stride = p) as a separable map per patch.

    Each patch ``(C, p, p)`` is a vector mapped to ``embed_dim`` features, which is exactly the
    conv; the separable layer applies mode products over the patch's channel and pixel modes.
    """

    def __init__(self, conv: nn.Conv2d, rank: int = 1) -> None:
        super().__init__()
        p = conv.kernel_size
        if conv.stride != p or conv.padding not in ((0, 0), 0) or conv.groups != 1:
            raise ValueError("SeparablePatchEmbed needs a conv with kernel = stride, no padding")
        self.patch = p
        in_shape = tuple(d for d in (conv.in_channels, *p) if d > 1)
        plan = plan_shapes(math.prod(in_shape), conv.out_channels, in_shape=in_shape, rank=rank)
        self.proj = SeparableLinear(in_shape, plan.out_shape, bias=conv.bias is not None,
                                    rank=rank, flatten=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        ph, pw = self.patch
        x = x.reshape(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
        y = self.proj(x.reshape(b, h // ph, w // pw, c * ph * pw))  # (B, H', W', D)
        return y.permute(0, 3, 1, 2)


def _vit(cfg: ViTConfig, num_classes: int, image_shape: Sequence[int]) -> nn.Module:
    """timm's VisionTransformer; ``separable_groups`` picks which Linear groups are separable."""
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(
        img_size=image_shape[1], patch_size=cfg.patch_size, in_chans=image_shape[0],
        num_classes=num_classes, embed_dim=cfg.embed_dim, depth=cfg.depth,
        num_heads=cfg.num_heads, drop_rate=cfg.dropout,
    )
    if not cfg.separable:
        return net
    groups = {"mlp": ["*.mlp.fc1", "*.mlp.fc2"], "attn": ["*.attn.qkv", "*.attn.proj"],
              "head": ["head"]}
    include = [p for g in cfg.separable_groups if g in groups for p in groups[g]]
    if include:
        separate(net, include, compression=cfg.compression,
                 rank=None if cfg.compression else cfg.rank)
    if "patch" in cfg.separable_groups:
        net.patch_embed.proj = SeparablePatchEmbed(net.patch_embed.proj, rank=cfg.rank)
    return net


MODELS: dict[str, Callable[[ModelConfig, int, Sequence[int]], nn.Module]] = {
    "mlp": _mlp,
    "vgg16": _vgg16,
    "vit": _vit,
}


def build_model(cfg: ModelConfig, num_classes: int, image_shape: Sequence[int],
                mean: Sequence[float], std: Sequence[float]) -> ImageClassifier:
    """Create the model named by ``cfg.name`` for images of ``image_shape`` (C, H, W)."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model {cfg.name!r}; choose from {', '.join(MODELS)}")
    net = MODELS[cfg.name](cfg, num_classes, tuple(image_shape))
    return ImageClassifier(net, mean, std, image_shape)
