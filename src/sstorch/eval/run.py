r"""Robustness evaluation the field trusts: an attack ensemble, sanity checks, a certificate.

``sstorch eval RUN_DIR`` rebuilds a trained run's model, loads ``best.safetensors`` and
measures, on the full test set unless ``--n`` says otherwise:

* **clean and robust accuracy** under an ensemble of L∞ attacks (``--attacks``) at radius ε
  (pixel scale, images in ``[0, 1]``). An example counts as robust only if it survives *every*
  attack: ``robust = (1/n) Σ_i 1[f(x_i) = y_i ∧ ∀a: f(a(x_i)) = y_i]`` — the per-example worst
  case, never the best single attack's average. Fast path (default): each attack runs only on
  the examples still standing (clean-correct and not broken by an earlier attack), so an
  attack's reported ``acc`` is the accuracy *after attacks 1..k* in the given order;
  ``fast=False`` runs each attack on all clean-correct examples (stand-alone accuracies).
* an **ε sweep** with PGD-20, and the **sanity checks** of Carlini et al. 2019 ("On Evaluating
  Adversarial Robustness", arXiv 1902.06705), each a :class:`SanityCheck` with numbers, see
  :func:`sanity_checks`. A defence that masks gradients fails at least one of them.
* a **certified L2 radius** from a global Lipschitz bound when the network is a chain of
  Linear / SeparableLinear layers and 1-Lipschitz activations (:func:`lipschitz_bound`,
  :func:`certify`). For logits ``z = f(x)`` with ``‖f(x) − f(x')‖₂ ≤ L‖x − x'‖₂`` the margin
  ``m(x) = z_y − max_{j≠y} z_j`` changes by at most ``√2·L·‖δ‖₂`` (``‖e_y − e_j‖₂ = √2``), so
  the prediction cannot change while ``‖δ‖₂ < m(x) / (√2 L)``. Radii are L2 norms in *pixel*
  space (``[0, 1]`` inputs, before the model's normalization).

Results go to ``eval.json`` (machine-readable, read by the report) and ``eval.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import itertools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from sstorch.config import Config, ConfigError, load_config
from sstorch.io.checkpoint import CheckpointError, load_checkpoint, read_metadata
from sstorch.io.fsutil import (
    FileSystemError,
    append_line,
    atomic_write_text,
    expand_path,
    fs_error,
    lock_dir,
    remove_stale_temps,
)
from sstorch.io.provenance import code_version, machine_description
from sstorch.layers.lowrank import LowRankLinear
from sstorch.layers.separable import SeparableLinear
from sstorch.layers.tensorized import TensorizedLinear
from sstorch.models import ImageClassifier, Normalize
from sstorch.pruning.sparse import sparse_inference
from sstorch.structure.stats import layer_stats

__all__ = [
    "DEFAULT_ATTACKS", "LARGE_EPS", "SanityCheck", "certify", "default_sweep",
    "evaluate_attacks", "evaluate_run", "lipschitz_bound", "load_run", "main_eval",
    "parse_attacks", "pgd_sweep", "render_markdown", "sanity_checks",
]

DEFAULT_ATTACKS = ("clean", "fgsm", "pgd", "cw", "autoattack")
LARGE_EPS = 0.5  # check (b): L∞ radius at which an honest evaluation breaks (almost) everything
SWEEP_STEPS = 20
CERT_RADII = (0.1, 0.25, 0.5)
Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------- attacks


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
def _frozen(model: nn.Module, channels_last: bool = True) -> Iterator[nn.Module]:
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


_BATCH_FIELDS = {"batch": int, "n": int, "clean": int, "robust": int, "clean_seconds": float,
                 "hits": dict, "seconds": dict, "tried": dict}
_PARTIAL_FIELDS = {"partial": int, "k": int, "attack": str, "n": int, "correct": str,
                   "robust": str, "clean_seconds": float, "hits": dict, "seconds": dict,
                   "tried": dict}


def _journal_lines(path: Path, key: str, warn: Callable[[str], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Records of ``path`` tagged ``key``, in order.

    Records of other keys are skipped silently; a damaged line (bad UTF-8, JSON cut by a kill,
    not an object) is skipped and reported through ``warn`` naming the file, so its work is
    simply redone.
    """
    if not path.is_file():
        return []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fs_error(exc, path) from exc
    out, damaged = [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            damaged += 1
            continue
        if not isinstance(rec, dict):
            damaged += 1
        elif rec.get("key") == key:
            out.append(rec)
    if damaged and warn is not None:
        warn(f"{path}: skipped {damaged} damaged line(s) (cut by a kill or not "
             "written by sstorch); their work is done again")
    return out


def _well_formed(rec: dict[str, Any], spec: dict[str, type], names: Sequence[str]) -> bool:
    """``rec`` has every field of ``spec`` with its type, and per-attack dicts over ``names``."""
    for field, typ in spec.items():
        value = rec.get(field)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float
              else isinstance(value, typ) and not isinstance(value, bool))
        if not ok:
            return False
    per_attack = [rec[f] for f in ("hits", "seconds", "tried")]
    done = names if "batch" in spec else names[:rec["k"] + 1]
    return all(isinstance(d.get(a), (int, float)) for d in per_attack for a in done)


def _append_journal(path: Path, rec: dict[str, Any]) -> None:
    """Append one JSON line and fsync it, so a finished piece survives a crash right after
    (:func:`sstorch.io.fsutil.append_line`: on a line of its own; a failed append leaves
    nothing)."""
    append_line(path, json.dumps(rec))


def _read_journal(path: Path, key: str, names: Sequence[str] = (),
                  warn: Callable[[str], None] | None = None
                  ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """``({batch: finished batch record}, {batch: furthest per-attack record})`` under ``key``.

    Phase lines, records of other keys and damaged lines are left out; a record that lacks a
    field (or is for other attacks) counts as damaged and is reported through ``warn``.
    """
    done: dict[int, dict[str, Any]] = {}
    partial: dict[int, dict[str, Any]] = {}
    bad = 0
    for r in _journal_lines(path, key, warn):
        if "phase" in r:
            continue
        if "batch" in r:
            if _well_formed(r, _BATCH_FIELDS, names):
                done[r["batch"]] = r
            else:
                bad += 1
        elif "partial" in r:
            if (_well_formed(r, _PARTIAL_FIELDS, names) and 0 <= r["k"] < len(names)
                    and names[r["k"]] == r["attack"]):
                if r["k"] >= partial.get(r["partial"], {"k": -1})["k"]:
                    partial[r["partial"]] = r
            else:
                bad += 1
        else:
            bad += 1
    if bad and warn is not None:
        warn(f"{path}: skipped {bad} record(s) with missing or wrong fields; their "
             "work is done again")
    return done, {b: r for b, r in partial.items() if b not in done}


def _mask_hex(mask: Tensor) -> str:
    """A bool vector as hex (bit-packed, big-endian within each byte)."""
    return np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes().hex()


def _hex_mask(text: str, n: int, device: torch.device) -> Tensor | None:
    """Inverse of :func:`_mask_hex`; None if ``text`` does not hold ``n`` bits."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if len(raw) != (n + 7) // 8:
        return None
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:n].astype(bool)
    return torch.from_numpy(bits.copy()).to(device)


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


# --------------------------------------------------------------------------- sanity checks


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
    with _frozen(model):
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


# --------------------------------------------------------------------------- certificate


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
        elif isinstance(m, SeparableLinear):
            lip = layer_stats(m)[0].lipschitz
        elif isinstance(m, nn.Linear):
            lip = float(torch.linalg.matrix_norm(m.weight.double(), ord=2))
        elif isinstance(m, (LowRankLinear, TensorizedLinear)):  # comparison baselines
            lip = float(torch.linalg.matrix_norm(m.to_dense().double(), ord=2))
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
    with _frozen(model):
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


# --------------------------------------------------------------------------- runs


def _config_from_dict(tree: dict[str, Any], source: str) -> Config:
    """A :class:`Config` from a checkpoint's ``config`` dict (``Config.to_dict()``)."""
    try:
        kwargs = {}
        for f in fields(Config):
            if f.name not in tree:
                continue
            sub = tree[f.name]
            default = getattr(Config(), f.name)
            kwargs[f.name] = type(default)(**sub) if isinstance(sub, dict) else sub
        return Config(**kwargs).validate()
    except (TypeError, ConfigError) as exc:
        raise ValueError(f"the config stored in {source} is not valid: {exc}") from exc


def load_run(target: str | os.PathLike, device: torch.device | str = "cpu"
             ) -> tuple[Config, ImageClassifier, Path, Path]:
    """``(config, model with weights, checkpoint, run_dir)`` for a run directory or checkpoint.

    A run directory needs ``config.yaml`` and ``best.safetensors`` (``last.safetensors`` when
    no best was kept); a checkpoint file carries its config in its metadata.

    Raises:
        FileNotFoundError: no such path, no config, or no checkpoint in the directory.
        CheckpointError: the checkpoint is unreadable or its weights do not fit the config.
    """
    from sstorch.data import DATASET_INFO, canonical_name
    from sstorch.models import build_model

    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory made by `sstorch "
                                "train` or a .safetensors checkpoint")
    if path.is_dir():
        run_dir = path
        cfg_path = path / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found; is {path} a run directory made by "
                                    "`sstorch train`?")
        ckpt = next((path / f for f in ("best.safetensors", "last.safetensors")
                     if (path / f).is_file()), None)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint in {path} (looked for best.safetensors and "
                                    "last.safetensors); train or resume the run first, or pass "
                                    "a checkpoint file")
        cfg, source = load_config(cfg_path), str(cfg_path)
    else:
        run_dir, ckpt = path.parent, path
        tree = read_metadata(ckpt).get("config")
        if isinstance(tree, dict):
            cfg, source = _config_from_dict(tree, str(ckpt)), f"the metadata of {ckpt}"
        elif (path.parent / "config.yaml").is_file():
            cfg, source = load_config(path.parent / "config.yaml"), str(path.parent / "config.yaml")
        else:
            raise FileNotFoundError(f"{ckpt} holds no config and there is no config.yaml next "
                                    "to it; evaluate its run directory instead")
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    try:
        load_checkpoint(ckpt, model, restore_rng=False, map_location="cpu")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (model built from {source})") from exc
    return cfg, model.to(device).eval(), ckpt, run_dir


def _batch_size(device: torch.device, image_shape: Sequence[int]) -> int:
    """1000 on CPU, 4096 on CUDA for images up to 32×32×3; ÷16 for larger images."""
    small = math.prod(image_shape) <= 3 * 32 * 32
    return (4096 if small else 256) if device.type == "cuda" else (1000 if small else 64)


# Modules that evaluation never imports (training, orchestration, export, benchmarks): editing
# them cannot change an evaluation's numbers, so they stay out of the journal key. A new module is
# in the key until it is listed here.
_NOT_EVALUATION = frozenset({"__main__.py", "cli.py", "experiments", "export", "training"})


def _package_digest(root: Path | None = None) -> str:
    """SHA-256 over the source of every sstorch module evaluation can run: all ``*.py`` files of
    the package (by path relative to it) except those under ``_NOT_EVALUATION``. Changes with that
    code, not with commits that touch only docs, results, tests, training or the sweep."""
    root = root or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in _NOT_EVALUATION:
            h.update(rel.as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# The source this process loaded (computed at import, so a module edited on disk while a long
# sweep runs cannot lend its digest to results of the code in memory).
_LOADED_DIGEST = _package_digest()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def parse_attacks(spec: str | Sequence[str]) -> list[str]:
    """``"clean,fgsm,pgd"`` → names, checked against the registry (unknown → ValueError)."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [s for s in names if s]
    if not names:
        raise ValueError("--attacks is empty; e.g. --attacks clean,fgsm,pgd,cw,autoattack")
    from sstorch.attacks.registry import ATTACKS

    choices = ["clean", *ATTACKS]
    for s in names:
        if s not in choices:
            raise ValueError(f"unknown attack {s!r} in --attacks; choose from "
                             f"{', '.join(choices)}")
    return list(dict.fromkeys(names))


def evaluate_run(target: str | os.PathLike, attacks: str | Sequence[str] = DEFAULT_ATTACKS,
                 eps: float | None = None, eps_sweep: Sequence[float] | None = None,
                 n: int | None = None, batch_size: int | None = None, seed: int = 0,
                 out: str | os.PathLike | None = None, device: str = "auto",
                 sanity_n: int = 1000, square_n: int = 200, square_queries: int = 5000,
                 fast: bool = True,
                 data_root: str | None = None,
                 attack_kwargs: dict[str, dict[str, Any]] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a run end to end and write ``eval.json`` and ``eval.md``; return the JSON dict.

    ``eps`` defaults to the run's ``attack.eps``; the sweep to :func:`default_sweep`; the
    sanity checks use the first ``sanity_n`` evaluated examples (Square the first
    ``square_n``); the attack ensemble, sweep and certificate use all ``n`` (default: the whole
    test split, ignoring the run's ``data.test_subset``). ``attack_kwargs`` passes constructor
    arguments per attack name, e.g. ``{"pgd": {"steps": 50, "restarts": 3}}``.
    """
    from sstorch.data import DATASET_INFO, build_datasets, canonical_name

    names = parse_attacks(attacks)
    if eps is not None:
        eps = _check_eps(eps)
    sweep_eps = None if eps_sweep is None else [_check_eps(e, "--eps-sweep value")
                                                  for e in eps_sweep]
    for what, v in (("--n", n), ("--batch-size", batch_size), ("--sanity-n", sanity_n),
                    ("--square-n", square_n), ("--square-queries", square_queries)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{what} must be an integer ≥ 1, got {v!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is available; use --device cpu")
    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")

    cfg, model, ckpt, run_dir = load_run(target, dev)
    eps = cfg.attack.eps if eps is None else eps
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    _, _, test = build_datasets(cfg.data.name, root=data_root or cfg.data.root,
                                val_size=cfg.data.val_size, seed=cfg.seed, augment=False,
                                download=cfg.data.download)
    ds: Dataset = test if n is None or n >= len(test) else Subset(test, range(n))
    bs = batch_size or _batch_size(dev, info.image_shape)
    loader = DataLoader(ds, batch_size=bs, shuffle=False,
                        num_workers=cfg.data.num_workers)
    log(f"evaluating {ckpt} on {len(ds)} {cfg.data.name} test images, L∞ ε={eps:g}, "
        f"attacks {','.join(names)}, device {dev}")

    kw = attack_kwargs or {}
    unknown = set(kw) - set(names)
    if unknown:
        raise ValueError(f"attack_kwargs names attacks not in the list {names}: {sorted(unknown)}")
    objs = {a: _make_attack(a, eps, seed, **kw.get(a, {})) for a in names if a != "clean"}
    out_dir = Path(out) if out is not None else run_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise FileSystemError(None, f"{out_dir}: exists and is not a directory — give a "
                              "directory for --out (eval.json and eval.md go into it)", out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fs_error(exc, out_dir) from exc
    with lock_dir(out_dir, "sstorch eval"):
        remove_stale_temps(out_dir)
        return _evaluate_into(out_dir, cfg, model, ckpt, run_dir, loader, ds, names, objs, kw,
                              eps, sweep_eps, bs, seed, fast, dev, sanity_n, square_n,
                              square_queries, log)


def _evaluate_into(out_dir: Path, cfg: Config, model: nn.Module, ckpt: Path, run_dir: Path,
                   loader: DataLoader, ds: Dataset, names: list[str], objs: dict[str, Attack],
                   kw: dict[str, dict[str, Any]], eps: float, sweep_eps: list[float] | None,
                   bs: int, seed: int, fast: bool, dev: torch.device, sanity_n: int,
                   square_n: int, square_queries: int,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The body of :func:`evaluate_run` once ``out_dir`` is locked."""
    from sstorch.structure.summary import summary

    # An interrupted evaluation resumes from here, attack by attack, as long as nothing that
    # decides a batch's outcome changed (the key); eval.json replaces the journal at the end.
    journal = out_dir / "eval.journal.jsonl"
    try:
        ckpt_digest = hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    except OSError as exc:
        raise fs_error(exc, ckpt) from exc
    key = hashlib.sha256(json.dumps({
        "checkpoint": ckpt_digest,
        "dataset": cfg.data.name, "n": len(ds), "batch_size": bs, "attacks": names,
        "attack_kwargs": kw, "eps": eps, "seed": seed, "fast": fast, "device": dev.type,
        "code": _LOADED_DIGEST}, sort_keys=True, default=str).encode()).hexdigest()
    res = evaluate_attacks(model, loader, objs, eps, seed=seed, device=dev, fast=fast,
                           progress=True, journal=journal, journal_key=key, log=log)
    table = {"clean": {"acc": res["clean_acc"], "seconds": res["clean_seconds"],
                       "n_attacked": res["n"]}} if "clean" in names else {}
    table.update(res["attacks"])
    for a, obj in objs.items():  # iterations, when the attack exposes them (PGD: "PGD-50")
        inner = getattr(obj, "attack", obj)
        for key in ("steps", "restarts"):
            value = getattr(inner, key, None)
            if isinstance(value, int):
                table[a][key] = value
    # The ε sweep and the sanity checks are journalled too, each as one line under the same key
    # with its own parameters (not in the key), so a crash in the sanity checks keeps the sweep.
    phases = {r["phase"]: r for r in _journal_lines(journal, key)
              if "phase" in r and "params" in r}

    def phase(name: str, params: dict[str, Any], fn: Callable[[], Any]) -> tuple[Any, float]:
        rec = phases.get(name)
        if rec is not None and rec["params"] == json.loads(json.dumps(params)):
            log(f"{name}: taken from the journal ({rec['seconds']:.0f} s when it ran)")
            return rec["value"], float(rec["seconds"])
        t0 = time.perf_counter()
        value = fn()
        secs = time.perf_counter() - t0
        _append_journal(journal, {"key": key, "phase": name, "params": params, "value": value,
                                  "seconds": secs})
        return value, secs

    sweep_values = list(sweep_eps or default_sweep(eps))
    sweep, sweep_secs = phase("eps_sweep", {"eps": sweep_values}, lambda: pgd_sweep(
        model, loader, sweep_values, seed=seed, device=dev))
    check_dicts, sanity_secs = phase(
        "sanity", {"sanity_n": sanity_n, "square_n": square_n, "square_queries": square_queries},
        lambda: [asdict(c) for c in sanity_checks(
            model, _subloader(loader, sanity_n), eps, sweep=sweep, square_n=square_n,
            square_queries=square_queries, seed=seed, device=dev)])
    checks = [SanityCheck(**c) for c in check_dicts]
    cert = certify(model, loader, device=dev)  # one clean pass: not worth a journal line
    cert.pop("radii", None)
    s = summary(model)
    kappas = [st.kappa for st in layer_stats(model)]
    result = {
        "run_dir": str(run_dir), "checkpoint": str(ckpt), "dataset": cfg.data.name,
        "model": cfg.model.name, "separable": cfg.model.separable, "n": res["n"], "eps": eps,
        "norm": "Linf", "params": s.total_params, "nnz": s.total_nnz,
        "compression": s.compression, "kappa": math.prod(kappas) if kappas else None,
        "clean_acc": res["clean_acc"], "attacks": table, "robust_acc": res["robust_acc"],
        "fast_path": fast, "resumed_batches": res["resumed_batches"],
        "resumed_attacks": res["resumed_attacks"],
        "resumed_seconds": res["resumed_seconds"],
        "eps_sweep": sweep, "eps_sweep_seconds": sweep_secs,
        "sanity": check_dicts, "sanity_seconds": sanity_secs,
        "sanity_n": min(sanity_n, res["n"]), "certified": cert, "seed": seed,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(dev), "code": code_version(),
    }
    result = _json_safe(result)
    atomic_write_text(out_dir / "eval.json",
                      json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "eval.md", render_markdown(result))
    journal.unlink(missing_ok=True)
    log(f"clean {result['clean_acc']:.4f}, robust {result['robust_acc']:.4f} (ε={eps:g}); "
        f"sanity {sum(c.passed for c in checks)}/{len(checks)} passed; "
        f"results in {out_dir / 'eval.json'} and eval.md")
    for c in checks:
        if not c.passed:
            log(f"  sanity check FAILED: {c.name}: {c.detail}")
    return result


def render_markdown(r: dict[str, Any]) -> str:
    """``eval.md``: the numbers of ``eval.json`` as tables a reviewer reads."""
    def f(v: Any, nd: int = 4) -> str:
        return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)

    order = ("cumulative: accuracy after attacks 1..k, each run only on the survivors"
             if r.get("fast_path") else "stand-alone accuracy of each attack")
    lines = [
        f"# Robustness evaluation: {r['model']} ({'separable' if r['separable'] else 'dense'})"
        f" on {r['dataset']}", "",
        f"checkpoint `{r['checkpoint']}`; {r['n']} test images; threat model L∞, ε = {r['eps']:g}"
        " (pixel scale, images in [0, 1]); seed " f"{r['seed']}; {r['date']}; {r['machine']}", "",
        f"params {r['params']:,}, nnz {r['nnz']:,}, compression {f(r['compression'], 1)}x, "
        f"κ = Π κ(W) over separable layers: {f(r['kappa'], 3)}"
        + (" (none, or ∞: a rank-deficient layer)" if r["kappa"] is None else ""), "",
        f"## Accuracy ({order})", "", "| attack | accuracy | seconds | attacked |",
        "| --- | --- | --- | --- |",
    ]
    for name, a in r["attacks"].items():
        lines.append(f"| {name} | {f(a['acc'])} | {f(a['seconds'], 2)} | {a.get('n_attacked')} |")
    lines += [f"| **robust (worst case per example)** | **{f(r['robust_acc'])}** | | |", "",
              "## ε sweep", "", "| ε | attack | accuracy |", "| --- | --- | --- |"]
    lines += [f"| {e['eps']:g} | {e['attack']} | {f(e['acc'])} |" for e in r["eps_sweep"]]
    passed = sum(c["passed"] for c in r["sanity"])
    lines += ["", f"## Sanity checks (Carlini et al. 2019): {passed}/{len(r['sanity'])} passed",
              "", f"On the first {r.get('sanity_n')} images.", "",
              "| check | result | numbers |", "| --- | --- | --- |"]
    lines += [f"| {c['name']} | {'PASS' if c['passed'] else '**FAIL**'} | "
              f"{c['detail'].replace('|', chr(92) + '|')} |" for c in r["sanity"]]
    c = r["certified"]
    lines += ["", "## Certified L2 robustness (Lipschitz bound)", "",
              "Radius ρ = margin / (√2·L), L2 norm in pixel space ([0, 1] inputs): no "
              "perturbation with ‖δ‖₂ < ρ changes the prediction.", "",
              f"Bound: {c.get('detail', '')} = {f(c['lipschitz'], 4)}; median radius "
              f"{f(c['radius_median'], 4)}", "", "| L2 radius | certified accuracy |",
              "| --- | --- |"]
    lines += [f"| {k} | {f(v)} |" for k, v in c["certified_acc"].items()]
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise ValueError(f"--eps-sweep must be comma-separated numbers, got {text!r}") from exc


def main_eval(argv: list[str]) -> int:
    """``sstorch eval RUN_DIR|CHECKPOINT [options]``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="sstorch eval",
        description="Evaluate a trained run: clean and worst-case robust accuracy under an "
        "L∞ attack ensemble, an ε sweep, the Carlini et al. 2019 sanity checks and a "
        "certified L2 radius. Writes eval.json and eval.md into the run directory.")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                   help="comma-separated, in order (default: %(default)s)")
    p.add_argument("--eps", type=float, default=None,
                   help="L∞ radius in pixel scale (default: the run's attack.eps)")
    p.add_argument("--eps-sweep", type=_floats, default=None,
                   help="ε values for the PGD sweep (default: 0, ε/2, ε, 2ε, 3ε)")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 1000 on CPU, 4096 on CUDA (less for large images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: the run directory)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--sanity-n", type=int, default=1000,
                   help="images for the sanity checks (default: %(default)s)")
    p.add_argument("--square-n", type=int, default=200,
                   help="images for the Square (black-box) check (default: %(default)s)")
    p.add_argument("--square-queries", type=int, default=5000,
                   help="Square's query budget per image (default: %(default)s)")
    p.add_argument("--no-fast-path", action="store_true",
                   help="run every attack on every clean-correct image (stand-alone accuracies)")
    p.add_argument("--data-root", default=None, help="dataset root (default: the run's)")
    args = p.parse_args(argv)
    out = None if args.out is None else expand_path(args.out, "--out")
    root = None if args.data_root is None else expand_path(args.data_root, "--data-root")
    evaluate_run(expand_path(args.target, "RUN_DIR"), attacks=args.attacks, eps=args.eps,
                 eps_sweep=args.eps_sweep, n=args.n, batch_size=args.batch_size, seed=args.seed,
                 out=out, device=args.device, sanity_n=args.sanity_n, square_n=args.square_n,
                 square_queries=args.square_queries,
                 fast=not args.no_fast_path, data_root=root)
    return 0
