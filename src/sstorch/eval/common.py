"""What every evaluation step shares: attacks by name, seeding, the frozen model, checks
of an attack's output."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from sstorch.attacks.base import Attack
from sstorch.pruning.sparse import sparse_inference


def _make_attack(name: str, eps: float, seed: int = 0, **kwargs: Any) -> Attack:
    """``sstorch.attacks.registry.make_attack`` (imported here: evaluation sits above it)."""
    from sstorch.attacks.registry import make_attack

    return make_attack(name, eps, seed=seed, **kwargs)


def _pgd(eps: float, steps: int, seed: int = 0) -> Attack:
    """PGD-``steps`` (CE loss, random start) with Madry's step size ``α = 2.5 ε / steps``."""
    return _make_attack("pgd", eps, seed, steps=steps)


def _check_eps(eps: float, what: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"{what} must be in [0, 1] (L∞ radius in pixel scale, images in [0, 1]),"
                         f" got {eps!r}; e.g. --eps 0.1 for MNIST-like data, 0.031 for CIFAR")
    return float(eps)


@contextlib.contextmanager
def _seeded(seed: int, *salt: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's RNG seeded from ``(seed, *salt)``; the global state is kept."""
    mixed = seed
    for s in salt:
        mixed = (mixed * 1_000_003 + s + 1) % 2**62
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(mixed)
        yield


@contextlib.contextmanager
def channels_last_inference(model: nn.Module) -> Iterator[nn.Module]:
    """On the CPU, the model's 4-D parameters and buffers (convolution kernels) in channels-last
    layout for the duration; restored to the standard layout on exit.

    The same function up to float rounding (same arithmetic, another summation order inside
    oneDNN's kernels); an attack step on the width-1/8 VGG-16 of the paper sweep costs about
    1.25× less on one free core of the 2-core EPYC (``python benchmarks/eval_cost.py``,
    docs/eval_cost.md). Inputs stay as they are. CUDA models are
    left alone: in fp32 the layout's benefit there is not measured. Parameters keep their
    identity (their ``.data`` is re-laid), so optimisers and hooks holding them are unaffected.
    """
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers())
               if t.dim() == 4 and t.device.type == "cpu" and t.is_contiguous()]
    for t in tensors:
        t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for t in tensors:
            t.data = t.data.contiguous()


@contextlib.contextmanager
def frozen(model: nn.Module, channels_last: bool = True) -> Iterator[nn.Module]:
    """``model`` in eval mode without parameter gradients (attacks need input gradients only);
    pruned Linear layers run with sparse weights (:func:`sstorch.pruning.sparse.sparse_inference`)
    and, on the CPU, convolutions in channels-last layout (:func:`channels_last_inference`;
    ``channels_last=False`` keeps the standard layout, for benchmarks)."""
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)
    try:
        with sparse_inference(model), (channels_last_inference(model) if channels_last
                                       else contextlib.nullcontext()):
            yield model
    finally:
        for m, training in modes.items():
            m.training = training
        for p, g in grads.items():
            p.requires_grad_(g)


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_adv(name: str, xa: Tensor, x: Tensor, eps: float) -> None:
    """Trust nothing: an attack's output must lie in the ε-ball and the pixel box."""
    if xa.shape != x.shape:
        raise RuntimeError(f"attack {name!r} returned shape {tuple(xa.shape)} for images of "
                           f"shape {tuple(x.shape)}")
    if not x.numel():
        return
    dist = float((xa - x).abs().amax())
    if dist > eps + 1e-5 or float(xa.min()) < -1e-6 or float(xa.max()) > 1 + 1e-6:
        raise RuntimeError(f"attack {name!r} returned images outside the L∞ ball of radius {eps}"
                           f" or outside [0, 1] (distance {dist:.4g}); its result is invalid")


def _subloader(loader: DataLoader, m: int) -> DataLoader:
    """The first ``m`` examples of ``loader``'s dataset, same batch size, in order."""
    ds = loader.dataset
    if m >= len(ds):
        return loader
    return DataLoader(Subset(ds, range(m)), batch_size=loader.batch_size, shuffle=False)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)
