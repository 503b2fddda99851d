r"""A certified L2 radius from a global Lipschitz bound (chain networks only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sstorch.eval.common import _device_of, frozen
from sstorch.layers.base import StructuredLinear
from sstorch.models import ImageClassifier, Normalize

CERT_RADII = (0.1, 0.25, 0.5)


def _chain(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules ``module`` applies in sequence, if it is a plain chain (else one leaf)."""
    if isinstance(module, ImageClassifier):
        return [(f"{prefix}normalize", module.normalize), *_chain(module.net, f"{prefix}net.")]
    if isinstance(module, nn.Sequential):
        return [item for name, child in module.named_children()
                for item in _chain(child, f"{prefix}{name}.")]
    return [(prefix.rstrip("."), module)]


_ONE_LIPSCHITZ = (nn.ReLU, nn.Tanh, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


@torch.no_grad()
def lipschitz_bound(model: nn.Module) -> tuple[float | None, str]:
    r"""Global L2 Lipschitz upper bound ``L = Π_layers Lip(layer)`` of a chain network.

    Per layer: ``Normalize`` ``max_c 1/std_c``; ``nn.Linear`` ``‖W‖₂`` (largest singular value,
    fp64; also the baselines ``LowRankLinear`` and ``TensorizedLinear``, from their dense W);
    ``SeparableLinear`` ``Π_k ‖U_k‖₂ = ‖U_1 ⊗ … ⊗ U_K‖₂`` for R = 1 (exact), the triangle bound
    ``Σ_r Π_k ‖U_k[r]‖₂`` for R > 1 (``LayerStats.lipschitz``); ReLU, Tanh, Flatten, Identity,
    Dropout (eval) 1; LeakyReLU ``max(1, |slope|)``. Biases do not change it. Anything else
    (GELU is not 1-Lipschitz: its slope reaches ≈ 1.13; convolutions, batch norm, attention,
    non-chain containers) is refused.

    Returns:
        ``(L, detail)``; ``L`` is None when refused, and ``detail`` says why.
    """
    lip_total, factors = 1.0, []
    for name, m in _chain(model):
        if isinstance(m, Normalize):
            lip = float((1.0 / m.std.double().abs()).max())
        elif isinstance(m, StructuredLinear):  # separable: Π_k ‖U_k‖₂; baselines: ‖W‖₂
            lip = m.lipschitz_bound()
        elif isinstance(m, nn.Linear):
            lip = float(torch.linalg.matrix_norm(m.weight.double(), ord=2))
        elif isinstance(m, nn.LeakyReLU):
            lip = max(1.0, abs(m.negative_slope))
        elif isinstance(m, _ONE_LIPSCHITZ):
            lip = 1.0
        else:
            return None, (f"no certificate: layer {name or '(model)'} ({type(m).__name__}) is not"
                          " one of Normalize, Linear, SeparableLinear, ReLU/LeakyReLU/Tanh, "
                          "Flatten, Dropout in a plain chain")
        lip_total *= lip
        if lip != 1.0:
            factors.append(f"{lip:.4g} ({name})")
    return lip_total, "L = " + (" × ".join(factors) if factors else "1")


@torch.no_grad()
def certify(model: nn.Module, loader: DataLoader, radii: Sequence[float] = CERT_RADII,
            device: torch.device | str | None = None) -> dict[str, Any]:
    r"""Certified L2 radii ``ρ_i = m_i / (√2 L)`` in pixel space, from :func:`lipschitz_bound`.

    ``m_i = z_y − max_{j≠y} z_j`` for a correctly classified example, else 0. No input
    ``x'`` with ``‖x' − x_i‖₂ < ρ_i`` changes the prediction (pixels in ``[0, 1]``; an L∞
    ball of radius ε lies inside the L2 ball of radius ``ε·√d``).

    Returns:
        ``{"lipschitz", "radius_median", "certified_acc": {str(r): fraction with ρ_i > r},
        "norm": "L2", "detail"}``; the numbers are None when the bound is refused.
    """
    lip, detail = lipschitz_bound(model)
    out: dict[str, Any] = {"lipschitz": lip, "radius_median": None,
                           "certified_acc": {str(r): None for r in radii}, "norm": "L2",
                           "space": "pixel [0, 1]", "detail": detail}
    if lip is None:
        return out
    device = _device_of(model, device)
    radius = []
    with frozen(model):
        for x, y in loader:
            z = model(x.to(device)).double()
            y = y.to(device)
            true = z.gather(1, y[:, None]).squeeze(1)
            margin = (true - z.scatter(1, y[:, None], float("-inf")).amax(1)).clamp_min(0)
            radius.append((margin / (math.sqrt(2) * lip) if lip > 0 else margin * math.inf)
                          .cpu())
    rho = torch.cat(radius)
    out["radius_median"] = float(rho.median()) if rho.numel() else None
    out["certified_acc"] = {str(r): float((rho > r).double().mean()) for r in radii}
    out["radii"] = rho
    return out
