"""The deterministic train/validation split carved from a dataset's training files."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_indices"]


def split_indices(n: int, val_size: int | float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic disjoint ``(train_idx, val_idx)`` of ``range(n)``, each sorted.

    ``val_size`` below 1 is a fraction of ``n`` (rounded); from 1 on, a whole count of samples
    (``5000`` and ``5000.0`` alike, as a config file may write it).
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be a count or a fraction, got {val_size!r}")
    if 0 < val_size < 1:
        val_size = round(val_size * n)
    elif val_size != int(val_size):
        raise ValueError(f"val_size must be a fraction below 1 or a whole count, got {val_size}")
    val_size = int(val_size)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} training samples, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values
