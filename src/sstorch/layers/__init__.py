"""Structured replacements for ``nn.Linear``: :class:`SeparableLinear` (the paper's layer) and
the low-rank / tensorized baselines it is compared with, all :class:`StructuredLinear`."""

from sstorch.layers.base import LAYERS, StructuredLinear, register_layer
from sstorch.layers.lowrank import LowRankLinear
from sstorch.layers.separable import SeparableLinear
from sstorch.layers.tensorized import TensorizedLinear

__all__ = ["LAYERS", "LowRankLinear", "SeparableLinear", "StructuredLinear", "TensorizedLinear",
           "register_layer"]
