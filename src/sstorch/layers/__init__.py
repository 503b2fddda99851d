"""Structured replacements for ``nn.Linear``: :class:`SeparableLinear` (the paper's layer) and
the low-rank / tensorized baselines it is compared with."""

from sstorch.layers.baselines import LowRankLinear, TensorizedLinear
from sstorch.layers.separable import SeparableLinear

__all__ = ["LowRankLinear", "SeparableLinear", "TensorizedLinear"]
