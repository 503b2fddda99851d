"""Starting a run from trained weights (``init_from``): a run directory or a checkpoint, dense
weights decomposed into a structured model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sstorch.config import ConfigError
from sstorch.io.checkpoint import (
    CheckpointCorrupted,
    CheckpointError,
    load_checkpoint,
    load_weights,
)
from sstorch.layers.lowrank import LowRankLinear
from sstorch.layers.separable import SeparableLinear
from sstorch.layers.tensorized import TensorizedLinear
from sstorch.structure.init import load_dense_state

__all__ = ["init_from"]


def init_from(model: nn.Module, target: str) -> str:
    """Load the model weights of a run directory (its best, else last, checkpoint) or of a
    ``.safetensors`` checkpoint into ``model``; the optimizer, epoch and RNG start afresh.

    A baseline or separable model can start from a dense run: each dense Linear weight is
    decomposed into its layer, a separable one getting the nearest Kronecker sum of its rank
    (:func:`sstorch.structure.init.load_dense_state`). Returns a note for the log.
    """
    path = Path(target)
    if path.is_dir():
        ckpt = next((path / f for f in ("best.safetensors", "last.safetensors")
                     if (path / f).is_file()), None)
        if ckpt is None:
            raise ConfigError(f"init_from={target!r} holds no best.safetensors or "
                              "last.safetensors; finish training that run first")
    elif path.is_file():
        ckpt = path
    else:
        raise ConfigError(f"init_from={target!r} does not exist; give a run directory made by "
                          "`sstorch train` or a .safetensors checkpoint")
    try:
        if any(isinstance(m, (LowRankLinear, TensorizedLinear)) for m in model.modules()):
            errors = load_dense_state(model, load_weights(ckpt))
            return f"initialized from {ckpt}" + "".join(
                f"; {n} decomposed (relative error {e:.3f})" for n, e in errors.items())
        separable = [n for n, m in model.named_modules() if isinstance(m, SeparableLinear)]
        weights = load_weights(ckpt) if separable else {}
        if any(f"{n}.weight" in weights for n in separable):  # a dense run: compress it
            errors = load_dense_state(model, weights)
            return f"initialized from {ckpt}" + "".join(
                f"; {n} ← nearest Kronecker sum (relative error {e:.3f})"
                for n, e in errors.items())
        load_checkpoint(ckpt, model, restore_rng=False, strict=True)
    except CheckpointCorrupted as exc:
        raise ConfigError(f"init_from={target!r}: {exc.path} is damaged: {exc.detail}; restore "
                          "it from a copy or start from another checkpoint") from exc
    except (CheckpointError, ValueError) as exc:
        raise ConfigError(f"init_from={target!r}: its weights do not fit this model (the model "
                          f"section must match the run it comes from): {exc}") from exc
    return f"initialized from {ckpt}"
