"""The stages of one sweep job and what they leave in its run directory.

Training (``sstorch train``, resumed after an interruption) ends with ``summary.json``; the
evaluation (clean, PGD with restarts, then AutoAttack on the PGD survivors, plus the ε sweep and
the sanity checks of ``sstorch eval``) ends with ``sweep.json``, which also keeps
``log10 Π_l κ(W_l)`` of the fully-connected layers. A run whose saved ``config.yaml`` no longer
matches its row's config is *stale* (:func:`config_drift`, :func:`handle_stale`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sstorch.config import drift_text
from sstorch.experiments.locks import held_by
from sstorch.experiments.manifest import Job, Manifest, job_overrides, jobs, selected
from sstorch.io.fsutil import atomic_write_text

KAPPA_RULE = "float64, rank tolerance max(m,n)·eps; baselines"  # how log10_kappa_fc was computed


def config_drift(job: Job) -> dict[str, tuple[Any, Any]]:
    """``{key: (value the run was trained with, value the row's config gives now)}``.

    Empty when the run has not started (no ``config.yaml``) or matches
    (:func:`sstorch.config.config_drift`). A run whose config drifted is *stale*: its numbers
    belong to another recipe.
    """
    from sstorch.config import config_drift as drift
    from sstorch.config import load_config

    saved = job.run_dir / "config.yaml"
    if not saved.is_file():
        return {}
    return drift(saved, load_config(job.config, job_overrides(job)))


def train_stage(job: Job, log: Callable[[str], None] = print) -> None:
    """Train the job's run, or resume it when a previous call started it."""
    from sstorch.config import load_config
    from sstorch.training.loop import train

    cfg = load_config(job.config, job_overrides(job))
    # a run with a config.yaml was started: resume it (from epoch 1 when it was stopped
    # before its first checkpoint; train refuses a fresh run into a started directory)
    started = any((job.run_dir / f).is_file() for f in ("last.safetensors", "config.yaml"))
    resume = job.run_dir if started else None
    log(f"== train {job.method} seed {job.seed}{' (resumed)' if resume else ''}")
    train(cfg, resume=resume, log=log)


def evaluate_stage(job: Job, m: Manifest, log: Callable[[str], None] = print) -> None:
    """Evaluate the trained run (clean, PGD-``pgd_steps`` with restarts, AutoAttack) and write
    ``sweep.json``: its eval settings, seconds, robust accuracy and ``log10_kappa_fc``."""
    from sstorch.eval.run import evaluate_run

    ev = job.eval or m.eval
    log(f"== evaluate {job.method} seed {job.seed}")
    t0 = time.perf_counter()
    result = evaluate_run(
        job.run_dir, attacks=["clean", "pgd", "autoattack"], n=ev.get("n"), seed=job.seed,
        attack_kwargs={"pgd": {"steps": int(ev["pgd_steps"]),
                               "restarts": int(ev["pgd_restarts"])}}, log=log)
    record = {"method": job.method, "seed": job.seed, "eval": dict(ev),
              # wall time, plus what batches finished before an interruption had cost
              "eval_seconds": time.perf_counter() - t0 + result.get("resumed_seconds", 0.0),
              "robust_acc": result["robust_acc"],
              "log10_kappa_fc": log10_kappa_fc(job.run_dir), "kappa_rule": KAPPA_RULE}
    atomic_write_text(job.run_dir / "sweep.json", json.dumps(record, indent=2) + "\n")


def run_job(job: Job, m: Manifest, log: Callable[[str], None] = print) -> None:
    """Train (or resume) and evaluate one (method, seed); each stage is skipped once done."""
    if drift := config_drift(job):
        raise ValueError(f"{job.run_dir} was trained with another config ({drift_text(drift)}); "
                         "move that directory away (or run with --move-stale) to retrain it")
    if not job.trained:
        train_stage(job, log)
    if not job.evaluated:
        evaluate_stage(job, m, log)


def fc_matrices(model: Any) -> list[tuple[str, Any]]:
    """``(name, W)`` of every fully-connected layer as the dense matrix it applies.

    Separable layers give ``Σ_r ⊗_k U_k[r]`` (their ``to_dense``), ``nn.Linear`` its weight,
    and the baseline layers (low-rank ``A B``, tensorly-torch Tucker / TT) their ``to_dense``.
    """
    from torch import nn

    from sstorch.layers.lowrank import LowRankLinear
    from sstorch.layers.separable import SeparableLinear
    from sstorch.layers.tensorized import TensorizedLinear

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (SeparableLinear, LowRankLinear, TensorizedLinear)):
            out.append((name, mod.to_dense()))
        elif isinstance(mod, nn.Linear):
            out.append((name, mod.weight))
    return out


def log10_kappa_fc(run_dir: Path) -> float:
    """``log10 Π_layers κ(W_l)``, κ = σ_max/σ_min over the min(m, n) singular values.

    ``inf`` when some W is numerically rank-deficient (e.g. a rank-r factorization with
    r < min(m, n)): ``σ_min ≤ σ_max · max(m, n) · ε_float64``, the usual numerical-rank tolerance
    (W is formed and decomposed in float64).
    """
    import torch

    from sstorch.eval.run import load_run

    _, model, _, _ = load_run(run_dir)
    total = 0.0
    with torch.no_grad():
        for _, w in fc_matrices(model):
            sv = torch.linalg.svdvals(w.detach().double())
            if sv[-1] <= sv[0] * max(w.shape) * torch.finfo(torch.float64).eps:
                return math.inf
            total += math.log10(float(sv[0] / sv[-1]))
    return total


def evaluation_progress(run_dir: Path) -> tuple[int, int] | None:
    """(batches, images) an unfinished evaluation of ``run_dir`` has journalled under its most
    recent key (``eval.journal.jsonl``, see :func:`sstorch.eval.worst_case.evaluate_attacks`),
    or None without a journal. Lines of older keys (another checkpoint or evaluation code: a resumed
    evaluation would redo them), damaged lines and the per-attack lines of unfinished batches
    are not counted."""
    path = run_dir / "eval.journal.jsonl"
    if not path.is_file():
        return None
    recs = []
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    for line in raw.split(b"\n"):
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and {"key", "batch", "n"} <= rec.keys():
            recs.append(rec)
    if not recs:
        return None
    latest = {r["batch"]: int(r["n"]) for r in recs if r["key"] == recs[-1]["key"]}
    return len(latest), sum(latest.values())


def train_seconds(run_dir: Path) -> float:
    """Σ per-epoch wall time (training + per-epoch validation) from ``metrics.csv``."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return sum(float(r["epoch_seconds"]) for r in csv.DictReader(f))


def training_end(run_dir: Path) -> dict[str, Any]:
    """How training ended, from ``metrics.csv`` and the best checkpoint's metadata: the last
    epoch's adversarial training loss and accuracy, and the epoch kept as ``best`` (highest
    validation robust accuracy) with its validation accuracies; blanks where a run lacks them."""
    from sstorch.io.checkpoint import read_metadata

    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    out: dict[str, Any] = dict.fromkeys(("final_train_loss", "final_train_adv_acc", "best_epoch",
                                         "best_val_clean_acc", "best_val_robust_acc"))
    if not epochs:
        return out
    last = epochs[-1]
    out["final_train_loss"] = round(float(last["train_loss"]), 4)
    out["final_train_adv_acc"] = round(float(last["train_adv_acc"]), 4)
    best = run_dir / "best.safetensors"
    epoch = read_metadata(best).get("epoch") if best.is_file() else None
    row = next((r for r in epochs if epoch is not None and int(r["epoch"]) == int(epoch)), None)
    if row is not None:
        out["best_epoch"] = int(epoch)
        out["best_val_clean_acc"] = float(row["val_clean_acc"])
        out["best_val_robust_acc"] = float(row["val_robust_acc"])
    return out


def handle_stale(m: Manifest, only: set[str] | None, move: bool,
                 log: Callable[[str], None] = print) -> None:
    """Refuse to run over stale runs (ValueError naming each drift), or rename them aside;
    never one another process holds (a sweep task or ``sstorch train`` / ``eval`` in it), and
    then nothing is moved."""
    stale = [(j, d) for j in jobs(m) if selected(j, only) and (d := config_drift(j))]
    if not stale:
        return
    if not move:
        lines = "\n".join(f"  {j.run_dir}: {drift_text(d)}" for j, d in stale)
        raise ValueError(f"{len(stale)} run(s) were trained with another config than their "
                         f"row's config now:\n{lines}\nmove them away, set a new out_dir in "
                         "sweep.yaml, or pass --move-stale (renames each to "
                         "<run>.stale-<time>; nothing is deleted)")
    busy = [(j.run_dir, who) for j, _ in stale if (who := held_by(j.run_dir))]
    if busy:  # renaming would carry off the live process's files mid-run
        lines = "\n".join(f"  {d} (held by {who})" for d, who in busy)
        raise ValueError(f"{len(busy)} stale run(s) are held by a live process:\n{lines}\n"
                         "stop it (kill -TERM <pid>) and run --move-stale again; "
                         "nothing was moved")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for j, _ in stale:
        target = j.run_dir.with_name(f"{j.run_dir.name}.stale-{stamp}")
        j.run_dir.rename(target)
        log(f"moved stale {j.run_dir} → {target}")
