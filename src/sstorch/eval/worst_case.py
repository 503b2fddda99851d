r"""Accuracy under an ensemble of attacks with the per-example worst case, and the PGD ε sweep."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sstorch.eval.common import (
    Attack,
    _check_adv,
    _check_eps,
    _device_of,
    _frozen,
    _pgd,
    _predict,
    _seeded,
    _sync,
)
from sstorch.eval.journal import _append_journal, _hex_mask, _mask_hex, _read_journal

SWEEP_STEPS = 20


def evaluate_attacks(model: nn.Module, loader: DataLoader, attacks: dict[str, Attack],
                     eps: float, seed: int = 0, device: torch.device | str | None = None,
                     fast: bool = True, progress: bool = False,
                     journal: str | os.PathLike | None = None, journal_key: str = "",
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Clean accuracy, per-attack accuracy and wall time, and per-example worst-case accuracy.

    ``robust_acc = (1/n) Σ_i 1[f(x_i) = y_i ∧ ∀a ∈ attacks: f(a(x_i)) = y_i]``. With ``fast``
    an attack runs only on examples still correct, so ``attacks[a]["acc"]`` is the accuracy
    after attacks 1..k (cumulative, in dict order); without it, on every clean-correct example
    (stand-alone accuracy). Each (attack, batch) call is seeded from ``(seed, batch, k)``.

    With ``journal`` (a file path) the state of a batch is appended to it after each attack
    (one JSON line tagged ``journal_key``: the clean-correct and still-robust masks and the
    counts so far), and a finished batch's counts as one line; a later call with the same key
    skips the batches found there and continues a batch after its last journalled attack, so
    an interrupted evaluation loses at most one attack on one batch and, every (batch, attack)
    pair being seeded on its own, ends with the same numbers. Damaged lines are skipped with a
    warning (through ``log``, else ``warnings.warn``). ``journal_key`` must change whenever
    anything that decides a batch's outcome changes (model, data, attacks, ε, seed, batch
    size).

    Returns:
        ``{"n", "clean_acc", "clean_seconds", "robust_acc", "attacks": {name: {"acc",
        "seconds", "n_attacked"}}, "resumed_batches", "resumed_attacks", "resumed_seconds"}``
        (the last three: batches taken from the journal, attacks of unfinished batches taken
        from it, and the seconds they had cost).
    """
    device = _device_of(model, device)
    names = list(attacks)
    hits = dict.fromkeys(names, 0)
    secs = dict.fromkeys(names, 0.0)
    tried = dict.fromkeys(names, 0)
    n = n_clean = n_robust = 0
    clean_secs = 0.0
    resumed_secs = 0.0
    resumed_attacks = 0
    jpath = Path(journal) if journal is not None else None
    def warn(msg: str) -> None:
        if log is not None:
            log(f"warning: {msg}")
        else:
            warnings.warn(msg, stacklevel=4)

    done, partial = (_read_journal(jpath, journal_key, names, warn) if jpath is not None
                     else ({}, {}))
    if (done or partial) and log is not None:
        more = (f" and {sum(r['k'] + 1 for r in partial.values())} attack(s) of "
                f"{len(partial)} unfinished batch(es)" if partial else "")
        log(f"resuming the attacks after {len(done)} finished batches{more} ({jpath})")
    bar = tqdm(total=len(loader.dataset), unit="img", desc="attacks", disable=not progress,
               leave=False, dynamic_ncols=True, file=sys.stderr)
    with _frozen(model), bar:
        for b, (x, y) in enumerate(loader):
            if b in done:
                rec = done[b]
                n, n_clean = n + rec["n"], n_clean + rec["clean"]
                n_robust += rec["robust"]
                clean_secs += rec["clean_seconds"]
                resumed_secs += rec["clean_seconds"] + sum(rec["seconds"].values())
                for name in names:
                    hits[name] += rec["hits"][name]
                    secs[name] += rec["seconds"][name]
                    tried[name] += rec["tried"][name]
                bar.update(rec["n"])
                continue
            x, y = x.to(device), y.to(device)
            # this batch's counts: hits, seconds, tried per attack, clean seconds
            b_hits, b_secs, b_tried = dict.fromkeys(names, 0), dict.fromkeys(names, 0.0), \
                dict.fromkeys(names, 0)
            first = 0
            rec = partial.get(b)
            correct = robust = None
            if rec is not None and rec["n"] == y.numel():
                correct = _hex_mask(rec["correct"], y.numel(), device)
                robust = _hex_mask(rec["robust"], y.numel(), device)
            if correct is not None and robust is not None:
                b_clean_secs = float(rec["clean_seconds"])
                first = rec["k"] + 1
                for name in names[:first]:
                    b_hits[name], b_secs[name] = int(rec["hits"][name]), rec["seconds"][name]
                    b_tried[name] = int(rec["tried"][name])
                resumed_attacks += first
                resumed_secs += b_clean_secs + sum(b_secs.values())
            else:
                t0 = time.perf_counter()
                correct = _predict(model, x) == y
                _sync(device)
                b_clean_secs = time.perf_counter() - t0
                robust = correct.clone()
            for k in range(first, len(names)):
                name = names[k]
                idx = (robust if fast else correct).nonzero().squeeze(1)
                if idx.numel():
                    t0 = time.perf_counter()
                    with _seeded(seed, b, k, device=device):
                        xa = attacks[name](model, x[idx], y[idx])
                    ok = _predict(model, xa) == y[idx]
                    _sync(device)
                    b_secs[name] += time.perf_counter() - t0
                    _check_adv(name, xa, x[idx], eps)
                    b_tried[name] += idx.numel()
                    robust[idx] &= ok
                    if not fast:
                        b_hits[name] += int(ok.sum())
                if fast:  # survivors of attacks 1..k
                    b_hits[name] += int(robust.sum())
                if jpath is not None and k < len(names) - 1:  # the last: the batch line
                    _append_journal(jpath, {
                        "key": journal_key, "partial": b, "k": k, "attack": name,
                        "n": y.numel(), "correct": _mask_hex(correct),
                        "robust": _mask_hex(robust), "clean_seconds": b_clean_secs,
                        "hits": {a: b_hits[a] for a in names[:k + 1]},
                        "seconds": {a: b_secs[a] for a in names[:k + 1]},
                        "tried": {a: b_tried[a] for a in names[:k + 1]}})
            n += y.numel()
            n_clean += int(correct.sum())
            n_robust += int(robust.sum())
            clean_secs += b_clean_secs
            for a in names:
                hits[a] += b_hits[a]
                secs[a] += b_secs[a]
                tried[a] += b_tried[a]
            if jpath is not None:
                _append_journal(jpath, {
                    "key": journal_key, "batch": b, "n": y.numel(),
                    "clean": int(correct.sum()), "robust": int(robust.sum()),
                    "clean_seconds": b_clean_secs, "hits": b_hits, "seconds": b_secs,
                    "tried": b_tried})
            bar.update(y.numel())
            bar.set_postfix(clean=f"{n_clean / n:.3f}", robust=f"{n_robust / n:.3f}")
    n_div = max(n, 1)
    return {
        "n": n, "clean_acc": n_clean / n_div, "clean_seconds": clean_secs,
        "robust_acc": n_robust / n_div,
        "attacks": {a: {"acc": hits[a] / n_div, "seconds": secs[a], "n_attacked": tried[a]}
                    for a in names},
        "resumed_batches": len(done), "resumed_attacks": resumed_attacks,
        "resumed_seconds": resumed_secs,
    }


def _correct_after(model: nn.Module, loader: DataLoader, attack: Attack | None, eps: float,
                   seed: int, salt: int, device: torch.device) -> Tensor:
    """Per-example ``1[f(a(x)) = y]`` (bool, CPU, dataset order); ``a`` only on clean-correct."""
    out = []
    for b, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        ok = _predict(model, x) == y
        idx = ok.nonzero().squeeze(1)
        if attack is not None and idx.numel():
            with _seeded(seed, b, salt, device=device):
                xa = attack(model, x[idx], y[idx])
            _check_adv("sanity attack", xa, x[idx], eps)
            ok[idx] = _predict(model, xa) == y[idx]
        out.append(ok.cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _acc(mask: Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else float("nan")


def pgd_sweep(model: nn.Module, loader: DataLoader, eps_values: Sequence[float],
              steps: int = SWEEP_STEPS, seed: int = 0,
              device: torch.device | str | None = None) -> list[dict[str, Any]]:
    """PGD-``steps`` accuracy at each ε (``α = 2.5 ε / steps``): ``[{"eps", "attack", "acc"}]``.

    Sorted by ε; ε = 0 is the clean accuracy.
    """
    device = _device_of(model, device)
    rows = []
    with _frozen(model):
        for i, e in enumerate(sorted({_check_eps(float(v), "sweep eps") for v in eps_values})):
            ok = _correct_after(model, loader, _pgd(e, steps, seed), e, seed, 100 + i,
                                device)
            rows.append({"eps": e, "attack": f"pgd-{steps}", "acc": _acc(ok)})
    return rows
