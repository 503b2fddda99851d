r"""The sanity checks of Carlini et al. 2019 that catch gradient masking."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sstorch.eval.common import _check_eps, _device_of, _make_attack, _pgd, _subloader, frozen
from sstorch.eval.worst_case import _acc, _correct_after, pgd_sweep

LARGE_EPS = 0.5  # check (b): L∞ radius at which an honest evaluation breaks (almost) everything


@dataclass
class SanityCheck:
    """One check of Carlini et al. 2019: its name, whether it passed, and the numbers."""

    name: str
    passed: bool
    detail: str


def default_sweep(eps: float) -> list[float]:
    """``{0, ε/2, ε, 2ε, 3ε} ∩ [0, 1]``; ``0, .05, .1, .2, .3`` when ε = 0."""
    if eps <= 0:
        return [0.0, 0.05, 0.1, 0.2, 0.3]
    return sorted({round(min(1.0, f * eps), 6) for f in (0.0, 0.5, 1.0, 2.0, 3.0)})


def sanity_checks(model: nn.Module, loader: DataLoader, eps: float, *,
                  sweep: list[dict[str, Any]] | None = None,
                  sweep_eps: Sequence[float] | None = None, large_eps: float = LARGE_EPS,
                  tol: float = 0.01, square_n: int = 200, square_queries: int = 5000,
                  seed: int = 0,
                  device: torch.device | str | None = None) -> list[SanityCheck]:
    r"""The sanity checks of Carlini et al. 2019 (§5), each with pass/fail and its numbers.

    Accuracies are measured on ``loader`` (attacks run on clean-correct examples only); a
    difference counts only beyond ``tol' = max(tol, 1/n)`` (one point, or one example on small
    sets), since attacks with random starts differ by chance.

    (a) ``monotone_eps``: PGD-20 accuracy does not increase with ε along the sweep
        (``acc(ε_{i+1}) ≤ acc(ε_i) + tol'``); ``sweep`` from :func:`pgd_sweep` is reused if given.
    (b) ``large_eps``: PGD-100 (α = 2.5ε/100) at ``large_eps`` (default 0.5, half the pixel
        range: the ball then contains the flat gray image, and an image is at most 0.5 away
        from any image that agrees with it on which half of [0, 1] each pixel lies in) leaves
        accuracy ≤ max(1 %, 0.1 · clean). An attack that cannot break a model under such a
        perturbation is not finding gradients.
    (c) ``iterative_vs_fgsm``: PGD-10 accuracy ≤ FGSM accuracy + tol' at ε.
    (d) ``more_steps``: PGD-100 accuracy ≤ PGD-10 accuracy + tol' at ε.
    (e) ``blackbox_vs_whitebox``: Square (black-box, gradient-free, ``square_queries``
        queries) on the first ``square_n`` examples (Square is slow, so a subset) is
        not stronger than the best white-box attack on the same examples:
        ``acc_square ≥ acc_whitebox − tol'`` where ``acc_whitebox`` is the per-example worst
        case over FGSM, PGD-10, PGD-100, PGD-100 on the CW margin, APGD-CE and APGD-T
        (fixed-step PGD on CE alone can stall where the margin losses and adaptive steps do
        not, which is weak attacking, not masking). Failing it means the gradients mislead
        every white-box attack: gradient masking.
    (f) ``deterministic_forward``: two eval-mode forward passes on the same batch give
        bit-identical logits (a randomised defence needs EOT attacks, not these).
    """
    eps = _check_eps(eps)
    large_eps = _check_eps(large_eps, "large_eps")
    device = _device_of(model, device)
    checks: list[SanityCheck] = []
    with frozen(model):
        clean = _correct_after(model, loader, None, eps, seed, 0, device)
        n = clean.numel()
        if n == 0:
            raise ValueError("sanity_checks needs a non-empty loader")
        tol = max(tol, 1.0 / n)
        c_acc = _acc(clean)
        fgsm = _correct_after(model, loader, _make_attack("fgsm", eps, seed), eps, seed,
                               1, device)
        pgd10 = _correct_after(model, loader, _pgd(eps, 10, seed), eps, seed, 2, device)
        pgd100 = _correct_after(model, loader, _pgd(eps, 100, seed), eps, seed, 3, device)
        big = _correct_after(model, loader, _pgd(large_eps, 100, seed), large_eps, seed, 4,
                             device)
        if sweep is None:
            sweep = pgd_sweep(model, loader, sweep_eps or default_sweep(eps), seed=seed,
                              device=device)
        rows = sorted(sweep, key=lambda r: r["eps"])
        bad = [(a, b) for a, b in itertools.pairwise(rows) if b["acc"] > a["acc"] + tol + 1e-9]
        curve = ", ".join(f"ε={r['eps']:g}: {r['acc']:.4f}" for r in rows)
        checks.append(SanityCheck(
            "monotone_eps", not bad,
            f"{rows[0]['attack'] if rows else 'PGD'} accuracy {curve}"
            + (f"; rises at ε={', '.join(str(b['eps']) for _, b in bad)}" if bad else "")
            + f" (tolerance {tol:.3f}, n={n})"))
        limit = max(0.01, 0.1 * c_acc)
        checks.append(SanityCheck(
            "large_eps", _acc(big) <= limit,
            f"PGD-100 at ε={large_eps:g}: accuracy {_acc(big):.4f} (must be ≤ {limit:.4f} = "
            f"max(0.01, 0.1·clean {c_acc:.4f}); n={n})"))
        checks.append(SanityCheck(
            "iterative_vs_fgsm", _acc(pgd10) <= _acc(fgsm) + tol + 1e-9,
            f"ε={eps:g}: PGD-10 {_acc(pgd10):.4f} vs FGSM {_acc(fgsm):.4f} (PGD must be ≤ FGSM + "
            f"{tol:.3f}; n={n})"))
        checks.append(SanityCheck(
            "more_steps", _acc(pgd100) <= _acc(pgd10) + tol + 1e-9,
            f"ε={eps:g}: PGD-100 {_acc(pgd100):.4f} vs PGD-10 {_acc(pgd10):.4f} (must be ≤ "
            f"PGD-10 + {tol:.3f}; n={n})"))
        cw100 = _correct_after(model, loader, _make_attack("cw", eps, seed, steps=100), eps,
                               seed, 6, device)
        checks.append(_square_check(model, loader, eps, {"FGSM": fgsm, "PGD-10": pgd10,
                                                         "PGD-100": pgd100, "CW-100": cw100},
                                    tol, square_n, square_queries, seed, device))
        checks.append(_determinism_check(model, loader, device))
    return checks


def _square_check(model: nn.Module, loader: DataLoader, eps: float,
                  whitebox: dict[str, Tensor], tol: float, square_n: int, queries: int,
                  seed: int, device: torch.device) -> SanityCheck:
    """Check (e): Square vs the per-example worst case of the white-box attacks."""
    m = min(square_n, next(iter(whitebox.values())).numel())
    sub = _subloader(loader, m)
    square = _correct_after(model, sub, _make_attack("square", eps, seed, n_queries=queries),
                            eps, seed, 5, device)
    whitebox = dict(whitebox)
    for k, name in enumerate(("apgd-ce", "apgd-t")):
        whitebox[name.upper()] = _correct_after(model, sub, _make_attack(name, eps, seed), eps,
                                                seed, 7 + k, device)
    tol = max(tol, 1.0 / max(m, 1))
    union = torch.stack([v[:m] for v in whitebox.values()]).all(0)  # survives every one
    wb = ", ".join(f"{k} {_acc(v[:m]):.4f}" for k, v in whitebox.items())
    only_square = int((~square & union).sum())
    return SanityCheck(
        "blackbox_vs_whitebox", _acc(square) >= _acc(union) - tol - 1e-9,
        f"ε={eps:g}, first {m} examples: Square ({queries} queries) {_acc(square):.4f} vs "
        f"white-box worst case {_acc(union):.4f} ({wb}); Square must be ≥ white-box − "
        f"{tol:.3f}; {only_square} examples broken by Square only")


def _determinism_check(model: nn.Module, loader: DataLoader, device: torch.device) -> SanityCheck:
    x, _ = next(iter(loader))
    x = x.to(device)
    with torch.no_grad():
        a, b = model(x), model(x)
    same = torch.equal(a, b)
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return SanityCheck("deterministic_forward", same,
                       f"two eval-mode passes on {x.shape[0]} images: max |Δlogit| = {diff:.3g}")
