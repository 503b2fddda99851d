"""The ``model`` section: one config class per architecture, and the structure of its layers."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sstorch.config.yamlio import ConfigError
from sstorch.config.yamlio import choice as _choice

__all__ = [
    "LEGACY_MODEL_KEYS",
    "MODEL_CONFIGS",
    "STRUCTURES",
    "MLPConfig",
    "ModelConfig",
    "VGG16Config",
    "ViTConfig",
    "migrate_model",
]

STRUCTURES = ("dense", "separable", "lowrank", "tucker", "tt")


@dataclass
class ModelConfig:
    """The model: an architecture (``name``, one subclass each) and the structure of its layers.

    ``structure`` is the one choice of what replaces the dense weights: ``dense`` (none),
    ``separable`` (Kronecker factors applied mode by mode, :mod:`sstorch.layers.separable`),
    or, for the MLP only, a comparison layer: ``lowrank`` (``W = A B``), ``tucker`` or ``tt``
    (:mod:`sstorch.layers.lowrank`, :mod:`sstorch.layers.tensorized`). ``rank``: the
    separable layers' Kronecker rank, lowrank's ``r`` (ints ≥ 1); tucker / tt take an int ≥ 1
    or a fraction < 1 of each layer's dense parameters.

    Configs written before the split (one class with every architecture's keys, and
    ``separable`` + ``baseline`` + ``baseline_rank`` for the structure) are read through
    :func:`migrate_model`, so old run directories and checkpoints keep loading.
    """

    name: str = "mlp"
    structure: str = "separable"
    rank: int | float = 1
    dropout: float = 0.0

    @classmethod
    def for_name(cls, name: Any) -> type[ModelConfig]:
        """The config class of architecture ``name`` (ConfigError naming the choices)."""
        if name not in MODEL_CONFIGS:
            raise ConfigError(f"model.name={name!r} is not one of: {', '.join(MODEL_CONFIGS)}")
        return MODEL_CONFIGS[name]

    @property
    def separable(self) -> bool:
        """Whether the structured layers are separable (Kronecker) ones."""
        return self.structure == "separable"

    def validate(self) -> None:
        arch = ModelConfig.for_name(self.name)
        if type(self) is not arch:
            raise ConfigError(f"model.name={self.name!r} needs a {arch.__name__}, got "
                              f"{type(self).__name__}")
        _choice(self.structure, STRUCTURES, "model.structure")
        if self.structure in ("lowrank", "tucker", "tt") and self.name != "mlp":
            raise ConfigError(f"model.structure={self.structure!r} is implemented for the mlp "
                              f"only, got model.name={self.name!r}")
        r = self.rank
        if isinstance(r, float) and r == int(r) and r >= 1:
            self.rank = r = int(r)
        if self.structure in ("tucker", "tt"):
            if not (0 < r < 1 or (isinstance(r, int) and r >= 1)):
                raise ConfigError(f"model.rank must be an int ≥ 1 or a fraction in (0, 1) for "
                                  f"model.structure={self.structure!r}, got {r}")
        elif not (isinstance(r, int) and r >= 1):
            raise ConfigError(f"model.rank must be an int ≥ 1, got {r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class MLPConfig(ModelConfig):
    """``Flatten → [Linear → ReLU]* → Linear``. ``hidden`` lists hidden shapes: a separable
    MLP keeps them as tensors (e.g. ``[[32, 32], [32, 32]]``), a dense one uses their
    products as widths; ``separate_head`` also factorizes the classifier layer."""

    name: str = "mlp"
    hidden: list = field(default_factory=lambda: [[32, 32], [32, 32]])
    separate_head: bool = False

    def validate(self) -> None:
        super().validate()
        for h in self.hidden:
            dims = h if isinstance(h, list) else [h]
            if not dims or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                   for v in dims):
                raise ConfigError(f"model.hidden={self.hidden!r}: every hidden shape must be a "
                                  f"size ≥ 1 or a non-empty list of sizes ≥ 1 (e.g. [[32, 32]]), "
                                  f"got {h!r}")


@dataclass
class _SurgeryConfig(ModelConfig):
    """Architectures made separable by surgery: ``compression`` is the per-layer target (dense
    / separable parameters) that picks each layer's rank; null uses ``rank``."""

    compression: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.compression is not None and self.compression < 1:
            raise ConfigError(f"model.compression must be ≥ 1, got {self.compression}")


@dataclass
class VGG16Config(_SurgeryConfig):
    """VGG-16 with batch norm. ``width`` scales every conv (1/8 for CPU-sized runs);
    ``variant``: ``cifar`` (FC head on the 512×1×1 map) or ``imagenet`` (512·7·7 → 4096 →
    4096); ``fc_hidden`` the head's width; ``separate_head`` also factorizes the classifier."""

    name: str = "vgg16"
    width: float = 1.0
    variant: str = "cifar"
    fc_hidden: int = 512
    separate_head: bool = False

    def validate(self) -> None:
        super().validate()
        if self.width <= 0:
            raise ConfigError(f"model.width must be > 0, got {self.width}")
        _choice(self.variant, ("cifar", "imagenet"), "model.variant")
        if self.fc_hidden < 1:
            raise ConfigError(f"model.fc_hidden must be ≥ 1, got {self.fc_hidden}")


@dataclass
class ViTConfig(_SurgeryConfig):
    """timm's VisionTransformer; ``separable_groups`` picks which Linear groups become
    separable (mlp: fc1/fc2, attn: qkv/proj, patch: the patch embedding, head)."""

    name: str = "vit"
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    separable_groups: list = field(default_factory=lambda: ["mlp"])

    def validate(self) -> None:
        super().validate()
        for k in ("patch_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, k) < 1:
                raise ConfigError(f"model.{k} must be ≥ 1, got {getattr(self, k)}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim={self.embed_dim} must be a multiple of "
                              f"model.num_heads={self.num_heads}")
        for g in self.separable_groups:
            _choice(g, ("mlp", "attn", "patch", "head"), "model.separable_groups[]")


MODEL_CONFIGS: dict[str, type[ModelConfig]] = {
    "mlp": MLPConfig, "vgg16": VGG16Config, "vit": ViTConfig,
}
LEGACY_MODEL_KEYS = ("separable", "baseline", "baseline_rank")


def migrate_model(tree: dict[str, Any]) -> dict[str, Any]:
    """A ``model`` section in the current keys; one in the legacy keys is translated.

    Legacy configs (written before ``model.structure``; every ``config.yaml`` of that time has
    ``separable`` and ``baseline``) spelled the structure ``separable: bool`` + ``baseline:
    none|lowrank|tucker|tt`` + ``baseline_rank``, and carried every architecture's keys. Here
    ``baseline`` ≠ none becomes ``structure: <baseline>`` with ``rank: <baseline_rank>``, else
    ``structure`` is ``separable`` or ``dense``; keys the architecture does not use (which the
    legacy code ignored) are dropped. Mixing ``structure`` with a legacy key is an error.
    """
    if not isinstance(tree, dict) or not any(k in tree for k in LEGACY_MODEL_KEYS):
        return tree
    out = dict(tree)
    if "structure" in out:
        raise ConfigError("model.structure replaces model.separable / baseline / baseline_rank: "
                          "give only model.structure (dense, separable, lowrank, tucker or tt)")
    separable = out.pop("separable", True)
    baseline = out.pop("baseline", "none")
    baseline_rank = out.pop("baseline_rank", 1)
    if not isinstance(separable, bool):
        raise ConfigError(f"model.separable must be bool, got {separable!r} (the current "
                          "spelling: model.structure=separable or dense)")
    if baseline is not None and not isinstance(baseline, str):
        raise ConfigError(f"model.baseline must be str, got {baseline!r}")
    if baseline not in (None, "none"):
        if separable:
            raise ConfigError(f"model.baseline={baseline!r} replaces the dense layers: set "
                              "model.separable=false (or write model.structure="
                              f"{baseline})")
        out["structure"], out["rank"] = baseline, baseline_rank
    else:
        out["structure"] = "separable" if separable else "dense"
    keep = {f.name for f in fields(ModelConfig.for_name(out.get("name", "mlp")))}
    return {k: v for k, v in out.items() if k in keep}
