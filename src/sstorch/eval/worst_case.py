r"""Accuracy under an ensemble of attacks with the per-example worst case, and the PGD ε sweep."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    _pgd,
    _predict,
    _seeded,
    _sync,
    frozen,
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
    totals = _Totals(names)
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
    record = (None if jpath is None
              else lambda line: _append_journal(jpath, {"key": journal_key, **line}))
    bar = tqdm(total=len(loader.dataset), unit="img", desc="attacks", disable=not progress,
               leave=False, dynamic_ncols=True, file=sys.stderr)
    with frozen(model), bar:
        for b, (x, y) in enumerate(loader):
            if b in done:
                totals.add_journalled(done[b])
                bar.update(done[b]["n"])
                continue
            x, y = x.to(device), y.to(device)
            batch = _resume_batch(partial.get(b), names, y.numel(), device)
            if batch is not None:
                totals.resumed_attacks += batch.first
                totals.resumed_secs += batch.clean_seconds + sum(batch.seconds.values())
            else:
                batch = _clean_batch(model, x, y, names, device)
            _attack_batch(model, x, y, b, batch, attacks, eps, seed, fast, device, record)
            totals.add_batch(batch, y.numel())
            if record is not None:
                record({"batch": b, "n": y.numel(), "clean": int(batch.correct.sum()),
                        "robust": int(batch.robust.sum()), "clean_seconds": batch.clean_seconds,
                        "hits": batch.hits, "seconds": batch.seconds, "tried": batch.tried})
            bar.update(y.numel())
            bar.set_postfix(clean=f"{totals.n_clean / totals.n:.3f}",
                            robust=f"{totals.n_robust / totals.n:.3f}")
    return totals.result(len(done))


@dataclass
class _Batch:
    """One batch's state between attacks: the masks and per-attack counts a journal line holds.

    ``correct``: clean-correct examples; ``robust``: still correct after every attack so far;
    ``first``: the index of the next attack to run (after a resumed partial batch).
    """

    correct: Tensor
    robust: Tensor
    clean_seconds: float
    hits: dict[str, int]
    seconds: dict[str, float]
    tried: dict[str, int]
    first: int = 0


def _empty_counts(names: list[str]) -> tuple[dict[str, int], dict[str, float], dict[str, int]]:
    """Zero ``(hits, seconds, tried)`` per attack, in ``names`` order."""
    return dict.fromkeys(names, 0), dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)


def _resume_batch(rec: dict[str, Any] | None, names: list[str], n: int,
                  device: torch.device) -> _Batch | None:
    """The batch as its last journal line ``rec`` left it; None if absent or not matching."""
    if rec is None or rec["n"] != n:
        return None
    correct = _hex_mask(rec["correct"], n, device)
    robust = _hex_mask(rec["robust"], n, device)
    if correct is None or robust is None:
        return None
    hits, secs, tried = _empty_counts(names)
    first = rec["k"] + 1
    for name in names[:first]:
        hits[name], secs[name] = int(rec["hits"][name]), rec["seconds"][name]
        tried[name] = int(rec["tried"][name])
    return _Batch(correct, robust, float(rec["clean_seconds"]), hits, secs, tried, first)


def _clean_batch(model: nn.Module, x: Tensor, y: Tensor, names: list[str],
                 device: torch.device) -> _Batch:
    """A new batch: the clean predictions (timed), no attack run yet."""
    t0 = time.perf_counter()
    correct = _predict(model, x) == y
    _sync(device)
    clean_seconds = time.perf_counter() - t0
    return _Batch(correct, correct.clone(), clean_seconds, *_empty_counts(names))


def _attack_batch(model: nn.Module, x: Tensor, y: Tensor, b: int, batch: _Batch,
                  attacks: dict[str, Attack], eps: float, seed: int, fast: bool,
                  device: torch.device, record: Callable[[dict[str, Any]], None] | None,
                  ) -> None:
    """Run attacks ``batch.first..`` on batch ``b`` (each seeded from ``(seed, b, k)``),
    updating ``batch``; after each but the last, its state goes to ``record`` (the journal)."""
    names = list(attacks)
    for k in range(batch.first, len(names)):
        name = names[k]
        idx = (batch.robust if fast else batch.correct).nonzero().squeeze(1)
        if idx.numel():
            t0 = time.perf_counter()
            with _seeded(seed, b, k, device=device):
                xa = attacks[name](model, x[idx], y[idx])
            ok = _predict(model, xa) == y[idx]
            _sync(device)
            batch.seconds[name] += time.perf_counter() - t0
            _check_adv(name, xa, x[idx], eps)
            batch.tried[name] += idx.numel()
            batch.robust[idx] &= ok
            if not fast:
                batch.hits[name] += int(ok.sum())
        if fast:  # survivors of attacks 1..k
            batch.hits[name] += int(batch.robust.sum())
        if record is not None and k < len(names) - 1:  # the last: the batch line
            record({
                "partial": b, "k": k, "attack": name, "n": y.numel(),
                "correct": _mask_hex(batch.correct), "robust": _mask_hex(batch.robust),
                "clean_seconds": batch.clean_seconds,
                "hits": {a: batch.hits[a] for a in names[:k + 1]},
                "seconds": {a: batch.seconds[a] for a in names[:k + 1]},
                "tried": {a: batch.tried[a] for a in names[:k + 1]}})


@dataclass
class _Totals:
    """The counts of :func:`evaluate_attacks` over the batches seen so far."""

    names: list[str]
    n: int = 0
    n_clean: int = 0
    n_robust: int = 0
    clean_secs: float = 0.0
    resumed_secs: float = 0.0
    resumed_attacks: int = 0
    hits: dict[str, int] = field(init=False)
    secs: dict[str, float] = field(init=False)
    tried: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.hits, self.secs, self.tried = _empty_counts(self.names)

    def add_journalled(self, rec: dict[str, Any]) -> None:
        """Add a batch finished in an earlier call (its journal line ``rec``)."""
        self.n, self.n_clean = self.n + rec["n"], self.n_clean + rec["clean"]
        self.n_robust += rec["robust"]
        self.clean_secs += rec["clean_seconds"]
        self.resumed_secs += rec["clean_seconds"] + sum(rec["seconds"].values())
        for name in self.names:
            self.hits[name] += rec["hits"][name]
            self.secs[name] += rec["seconds"][name]
            self.tried[name] += rec["tried"][name]

    def add_batch(self, batch: _Batch, n: int) -> None:
        """Add a batch of ``n`` examples after its last attack."""
        self.n += n
        self.n_clean += int(batch.correct.sum())
        self.n_robust += int(batch.robust.sum())
        self.clean_secs += batch.clean_seconds
        for a in self.names:
            self.hits[a] += batch.hits[a]
            self.secs[a] += batch.seconds[a]
            self.tried[a] += batch.tried[a]

    def result(self, resumed_batches: int) -> dict[str, Any]:
        """The dictionary :func:`evaluate_attacks` returns."""
        n_div = max(self.n, 1)
        return {
            "n": self.n, "clean_acc": self.n_clean / n_div, "clean_seconds": self.clean_secs,
            "robust_acc": self.n_robust / n_div,
            "attacks": {a: {"acc": self.hits[a] / n_div, "seconds": self.secs[a],
                            "n_attacked": self.tried[a]} for a in self.names},
            "resumed_batches": resumed_batches, "resumed_attacks": self.resumed_attacks,
            "resumed_seconds": self.resumed_secs,
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
    with frozen(model):
        for i, e in enumerate(sorted({_check_eps(float(v), "sweep eps") for v in eps_values})):
            ok = _correct_after(model, loader, _pgd(e, steps, seed), e, seed, 100 + i,
                                device)
            rows.append({"eps": e, "attack": f"pgd-{steps}", "acc": _acc(ok)})
    return rows
