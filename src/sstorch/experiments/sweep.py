"""A whole experiment as one resumable command: ``sstorch sweep DIR``.

``DIR`` holds one training config per method (``<method>.yaml``, its ``name`` = the method)
and ``sweep.yaml``, the manifest::

    out_dir: runs/paper-fmnist          # run dirs: <out_dir>/<method>/seed<k>
    csv: results/fashion_mnist.csv      # one line per (method, seed)
    details_csv: results/fashion_mnist_details.csv
    figures: docs/figures               # pareto plot and ε-sweep plot
    markdown: docs/results.md           # the table between <!-- sweep:table --> markers
    reference: dense-mlp                # compression = reference params / nnz
    eval: {pgd_steps: 50, pgd_restarts: 2, n: null}
    rows:
      - {method: dense-mlp, seeds: [0, 1, 2]}
      - {method: prune-mlp-200x, seeds: [0], init_from: dense-mlp}
      - {method: sep-mlp-200x-rslad, seeds: [0], teacher: dense-mlp}
      - {method: vgg16-sep, seeds: [0], reference: vgg16-dense, eval: {n: 1000}}

``init_from`` starts a row from another row's trained run of the same seed; ``teacher`` distils
it from one (``distill.teacher``, :mod:`sstorch.training.distill`). A row may name its own
``reference`` (its family's dense model: the compression column is that row's parameters over
this row's nonzero ones) and override ``eval`` keys (e.g. a test-set prefix ``n`` for models
whose full evaluation is unaffordable).

Jobs run seed by seed (every method's seed 0 first), each in three resumable stages:
training (``sstorch train``, resumed from ``last.safetensors`` after an interruption), the
evaluation (clean, PGD-``pgd_steps`` with restarts, then the standard AutoAttack on the PGD
survivors — so ``autoattack_acc`` is the per-example worst case of both — plus the ε sweep and
the gradient-masking sanity checks of ``sstorch eval``), and the tables and plots, which are
rebuilt from every finished run after each job. A finished stage leaves a file
(``summary.json``, ``sweep.json``) and is never redone. A run whose saved ``config.yaml`` no
longer matches its row's config is *stale*: the sweep refuses to resume it (``--move-stale``
renames it aside and retrains) and the table leaves it out, so no table mixes two recipes.
Several workers (``--workers``) share the queue through per-run lock files.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sstorch.config import drift_text, yaml_load
from sstorch.io.fsutil import atomic_write, atomic_write_text, expand_path

__all__ = ["Job", "Manifest", "collect", "load_manifest", "main_sweep", "run_job", "write_report"]

CSV_COLUMNS = ["method", "params", "nnz", "compression", "seed", "clean_acc", "pgd50_acc",
               "autoattack_acc", "train_seconds"]
TRAINING_COLUMNS = ["method", "seed", "state", "final_train_loss", "final_train_adv_acc",
                    "best_epoch", "best_val_clean_acc", "best_val_robust_acc", "train_seconds",
                    "train_machine"]
DETAIL_COLUMNS = ["method", "seed", "log10_kappa_fc", "sanity_passed", "sanity_total", "eval_n",
                  "eval_seconds", "final_train_loss", "final_train_adv_acc", "best_epoch",
                  "best_val_clean_acc", "best_val_robust_acc", "machine", "train_machine", "date"]
TABLE_BEGIN, TABLE_END = "<!-- sweep:table -->", "<!-- /sweep:table -->"
CLAIMS_BEGIN, CLAIMS_END = "<!-- sweep:claims -->", "<!-- /sweep:claims -->"
CLAIM_KINDS = {"within", "beats", "ablation"}
EVAL_KEYS = {"pgd_steps", "pgd_restarts", "n"}
KAPPA_RULE = "float64, rank tolerance max(m,n)·eps; baselines"  # how log10_kappa_fc was computed


@dataclass
class Row:
    method: str
    seeds: list[int]
    init_from: str | None = None
    reference: str | None = None  # the row's family's dense model (default: the manifest's)
    teacher: str | None = None  # the row whose trained run (same seed) it is distilled from
    eval: dict[str, Any] = field(default_factory=dict)  # overrides of the manifest's eval


@dataclass
class Manifest:
    root: Path
    out_dir: Path
    csv: Path
    details_csv: Path
    figures: Path
    markdown: Path | None
    reference: str
    rows: list[Row]
    eval: dict[str, Any] = field(default_factory=dict)
    training_csv: Path | None = None
    claims: list[dict[str, Any]] = field(default_factory=list)
    records: Path | None = None


def record_path(m: Manifest, method: str, seed: int) -> Path | None:
    """``<records>/<method>/seed<k>.json``: what the table keeps of one evaluated run, or None
    when the manifest keeps no records."""
    return None if m.records is None else m.records / method / f"seed{seed}.json"


RECORD_KEYS = ("config", "details", "row", "training")


def read_record(path: Path) -> dict[str, Any]:
    """A record file's content; ValueError naming the file when it is not a sweep record."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable sweep record ({exc}); restore it from git "
                         "or delete it to rerun its job") from exc
    if not isinstance(rec, dict) or (missing := [k for k in RECORD_KEYS if k not in rec]):
        lacks = missing if isinstance(rec, dict) else list(RECORD_KEYS)
        raise ValueError(f"{path} is not a sweep record (lacks {lacks}); restore it from git "
                         "or delete it to rerun its job")
    return rec


def load_record(m: Manifest, job: Job) -> dict[str, Any] | None:
    """The job's record when it exists and was made with the row's config of now, else None."""
    path = record_path(m, job.method, job.seed)
    if path is None or not path.is_file():
        return None
    rec = read_record(path)
    return None if record_drift(job, rec) else rec


def record_drift(job: Job, rec: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """:func:`config_drift` for a record: its saved config against the row's config of now."""
    import tempfile

    from sstorch.config import config_drift as drift
    from sstorch.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "config.yaml"
        saved.write_text(yaml.safe_dump(rec.get("config") or {}))
        return drift(saved, load_config(job.config, job_overrides(job)))


def _save_record(m: Manifest, job: Job, row: dict[str, Any], details: dict[str, Any],
                 training: dict[str, Any]) -> None:
    """Write (atomically) the record of an evaluated run: its config as trained and its rows."""
    path = record_path(m, job.method, job.seed)
    if path is None:
        return
    rec = {"method": job.method, "seed": job.seed,
           "config": yaml.safe_load((job.run_dir / "config.yaml").read_text()),
           "row": row, "details": details, "training": training,
           "origin": f"run directory {job.run_dir}"}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")


@dataclass
class Job:
    method: str
    seed: int
    config: Path
    run_dir: Path
    init_from: Path | None = None
    eval: dict[str, Any] = field(default_factory=dict)  # the manifest's, with the row's overrides
    teacher: Path | None = None

    @property
    def needs(self) -> list[Path]:
        """Run directories that must be trained before this job starts."""
        return [p for p in (self.init_from, self.teacher) if p is not None]

    @property
    def trained(self) -> bool:
        return (self.run_dir / "summary.json").is_file()

    @property
    def evaluated(self) -> bool:
        return (self.run_dir / "sweep.json").is_file()


def load_manifest(directory: str | os.PathLike) -> Manifest:
    """Read and check ``DIR/sweep.yaml`` (every row needs ``DIR/<method>.yaml``)."""
    root = Path(directory)
    path = root / "sweep.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; a sweep directory holds sweep.yaml and one "
                                "<method>.yaml per row (see configs/paper-fmnist/)")
    try:
        tree = yaml_load(path.read_text(encoding="utf-8"), str(path)) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    known = {"out_dir", "csv", "details_csv", "training_csv", "figures", "markdown", "reference",
             "eval", "rows", "claims", "records"}
    if unknown := set(tree) - known:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
    rows = []
    for i, r in enumerate(tree.get("rows") or []):
        if not isinstance(r, dict) or "method" not in r:
            raise ValueError(f"{path}: rows[{i}] needs a 'method'")
        if not (root / f"{r['method']}.yaml").is_file():
            raise FileNotFoundError(f"{path}: rows[{i}] names {r['method']!r} but "
                                    f"{root / (r['method'] + '.yaml')} does not exist")
        seeds = [int(s) for s in r.get("seeds", [0])]
        if unknown := set(r) - {"method", "seeds", "init_from", "reference", "eval", "teacher"}:
            raise ValueError(f"{path}: rows[{i}] has unknown keys {sorted(unknown)}; valid: "
                             "method, seeds, init_from, teacher, reference, eval")
        row_eval = r.get("eval") or {}
        if not isinstance(row_eval, dict) or (bad := set(row_eval) - EVAL_KEYS):
            raise ValueError(f"{path}: rows[{i}].eval must be a mapping of "
                             f"{sorted(EVAL_KEYS)}, got {row_eval!r}")
        rows.append(Row(r["method"], seeds, r.get("init_from"), r.get("reference"),
                        r.get("teacher"), dict(row_eval)))
    if not rows:
        raise ValueError(f"{path} lists no rows")
    methods = {r.method for r in rows}
    for r in rows:
        if r.init_from is not None and r.init_from not in methods:
            raise ValueError(f"{path}: {r.method} has init_from {r.init_from!r}, not a row")
        if r.teacher is not None and r.teacher not in methods:
            raise ValueError(f"{path}: {r.method} has teacher {r.teacher!r}, not a row")
        if r.reference is not None and r.reference not in methods:
            raise ValueError(f"{path}: {r.method} has reference {r.reference!r}, not a row")
    reference = tree.get("reference", rows[0].method)
    if reference not in methods:
        raise ValueError(f"{path}: reference {reference!r} is not a row")
    ev = {"pgd_steps": 50, "pgd_restarts": 1, "n": None, **(tree.get("eval") or {})}
    if bad := set(ev) - EVAL_KEYS:
        raise ValueError(f"{path}: eval has unknown keys {sorted(bad)}; valid: {sorted(EVAL_KEYS)}")
    claims = list(tree.get("claims") or [])
    for i, c in enumerate(claims):
        kind = c.get("kind") if isinstance(c, dict) else None
        if kind not in CLAIM_KINDS:
            raise ValueError(f"{path}: claims[{i}] needs kind one of {sorted(CLAIM_KINDS)}")
        named = [c.get("method"), c.get("reference"), *(c.get("others") or [])]
        if missing := [n for n in named if n is not None and n not in methods]:
            raise ValueError(f"{path}: claims[{i}] names {missing}, not rows")
    return Manifest(root=root, out_dir=Path(tree.get("out_dir", "runs/sweep")),
                    csv=Path(tree.get("csv", "results/sweep.csv")),
                    details_csv=Path(tree.get("details_csv", "results/sweep_details.csv")),
                    figures=Path(tree.get("figures", "results/figures")),
                    markdown=Path(tree["markdown"]) if tree.get("markdown") else None,
                    reference=reference, rows=rows, eval=ev, claims=claims,
                    training_csv=Path(tree["training_csv"]) if tree.get("training_csv") else None,
                    records=Path(tree["records"]) if tree.get("records") else None)


def jobs(m: Manifest) -> list[Job]:
    """All (method, seed) jobs, seed-major: every method's first seed before any second."""
    out = []
    for seed in sorted({s for r in m.rows for s in r.seeds}):
        for r in m.rows:
            if seed in r.seeds:
                run_dir = m.out_dir / r.method / f"seed{seed}"
                dep = None if r.init_from is None else m.out_dir / r.init_from / f"seed{seed}"
                teacher = (None if r.teacher is None
                           else m.out_dir / r.teacher / f"seed{seed}")
                out.append(Job(r.method, seed, m.root / f"{r.method}.yaml", run_dir, dep,
                               {**m.eval, **r.eval}, teacher))
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str:
    """This boot's id (Linux), so a lock from before a reboot never looks alive."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _held(run_dir: Path) -> bool:
    """Whether a live worker (this boot) holds ``run_dir/.lock``."""
    try:
        pid_text, _, boot = (run_dir / ".lock").read_text().strip().partition(" ")
        pid = int(pid_text or 0)
    except (OSError, ValueError):
        return False
    return bool(pid) and _pid_alive(pid) and boot in ("", _boot_id())


def _try_lock(run_dir: Path) -> Path | None:
    """Create ``run_dir/.lock`` exclusively (taking over a dead worker's); None if held.

    The lock holds ``"<pid> <boot id>"``; it is stale when that process is gone or the machine
    has rebooted since (a new process may then have the same pid).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _held(run_dir):
                return None
            lock.unlink(missing_ok=True)  # stale: its worker died
            continue
        os.write(fd, f"{os.getpid()} {_boot_id()}".strip().encode())
        os.close(fd)
        return lock
    return None


def job_overrides(job: Job) -> list[str]:
    """The ``--set`` items that turn the row's config into this job's training config."""
    overrides = [f"seed={job.seed}", f"out_dir={job.run_dir.parent}", f"name={job.run_dir.name}"]
    if job.init_from is not None:
        overrides.append(f"init_from={job.init_from}")
    if job.teacher is not None:
        overrides.append(f"distill.teacher={job.teacher}")
    return overrides


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


def run_job(job: Job, m: Manifest, log: Callable[[str], None] = print) -> None:
    """Train (or resume) and evaluate one (method, seed); each stage is skipped once done."""
    from sstorch.config import load_config
    from sstorch.eval.run import evaluate_run
    from sstorch.training.loop import train

    if drift := config_drift(job):
        raise ValueError(f"{job.run_dir} was trained with another config ({drift_text(drift)}); "
                         "move that directory away (or run with --move-stale) to retrain it")
    if not job.trained:
        cfg = load_config(job.config, job_overrides(job))
        # a run with a config.yaml was started: resume it (from epoch 1 when it was stopped
        # before its first checkpoint; train refuses a fresh run into a started directory)
        started = any((job.run_dir / f).is_file() for f in ("last.safetensors", "config.yaml"))
        resume = job.run_dir if started else None
        log(f"== train {job.method} seed {job.seed}{' (resumed)' if resume else ''}")
        train(cfg, resume=resume, log=log)
    if not job.evaluated:
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
    recent key (``eval.journal.jsonl``, see :func:`sstorch.eval.run.evaluate_attacks`), or None
    without a journal. Lines of older keys (another checkpoint or evaluation code: a resumed
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


def _train_seconds(run_dir: Path) -> float:
    """Σ per-epoch wall time (training + per-epoch validation) from ``metrics.csv``."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return sum(float(r["epoch_seconds"]) for r in csv.DictReader(f))


def _training_end(run_dir: Path) -> dict[str, Any]:
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


def _reference_params(m: Manifest, method: str | None = None) -> int:
    """Parameters of the dense model that ``method``'s compression is measured against: its
    row's ``reference``, else the manifest's."""
    from sstorch.config import load_config
    from sstorch.data import DATASET_INFO, canonical_name
    from sstorch.models import build_model
    from sstorch.structure.summary import summary

    row = next((r for r in m.rows if r.method == method), None)
    reference = row.reference if row is not None and row.reference else m.reference
    cfg = load_config(m.root / f"{reference}.yaml")
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    return summary(build_model(cfg.model, info.num_classes, info.image_shape, info.mean,
                               info.std)).total_params


def collect(m: Manifest, log: Callable[[str], None] = print
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """CSV rows (``CSV_COLUMNS``) and detail rows of every evaluated job, in manifest order.

    A job evaluated in its run directory gives its rows from there (and, where the manifest
    keeps ``records``, refreshes its record); a job without one gives the rows of its record, so
    a fresh checkout rebuilds the whole table from the committed records. Stale runs and records
    (made with another config than their row's now, :func:`config_drift`) are left out, with a
    line to ``log``, so one table never mixes two recipes.
    """
    refs: dict[str, int] = {}
    rows, details = [], []
    for job in jobs(m):
        if not job.evaluated:
            path = record_path(m, job.method, job.seed)
            if path is None or not path.is_file():
                continue
            rec = read_record(path)
            if drift := record_drift(job, rec):
                log(f"!! left out of the table: {path} is stale ({drift_text(drift)})")
                continue
            rows.append(rec["row"])
            details.append(rec["details"])
            continue
        if drift := config_drift(job):
            log(f"!! left out of the table: {job.run_dir} is stale ({drift_text(drift)})")
            continue
        ev = json.loads((job.run_dir / "eval.json").read_text())
        sw = json.loads((job.run_dir / "sweep.json").read_text())
        if job.method not in refs:
            refs[job.method] = _reference_params(m, job.method)
        if sw.get("kappa_rule") != KAPPA_RULE:  # written by an older sstorch: redo it once
            sw["log10_kappa_fc"], sw["kappa_rule"] = log10_kappa_fc(job.run_dir), KAPPA_RULE
            atomic_write_text(job.run_dir / "sweep.json", json.dumps(sw, indent=2) + "\n")
        attacks = ev["attacks"]
        pgd_key = "pgd"
        rows.append({
            "method": job.method, "params": ev["params"], "nnz": ev["nnz"],
            "compression": round(refs[job.method] / ev["nnz"], 2), "seed": job.seed,
            "clean_acc": ev["clean_acc"], "pgd50_acc": attacks[pgd_key]["acc"],
            "autoattack_acc": attacks["autoattack"]["acc"],
            "train_seconds": round(_train_seconds(job.run_dir), 3),
        })
        sanity = ev.get("sanity", [])
        trained_on = json.loads((job.run_dir / "summary.json").read_text()).get("machine")
        details.append({
            "method": job.method, "seed": job.seed, "log10_kappa_fc": sw.get("log10_kappa_fc"),
            "sanity_passed": sum(bool(c["passed"]) for c in sanity),
            "sanity_total": len(sanity), "eval_n": ev["n"],
            "eval_seconds": round(sw["eval_seconds"], 1), **_training_end(job.run_dir),
            "machine": ev.get("machine"),
            # older runs did not record where they were trained: the evaluation machine then
            "train_machine": trained_on or ev.get("machine"),
            "date": ev.get("date"), "eps_sweep": ev.get("eps_sweep"),
        })
        _save_record(m, job, rows[-1], details[-1], _training_row(job, "evaluated"))
    order = {r.method: i for i, r in enumerate(m.rows)}
    key = lambda r: (order[r["method"]], int(r["seed"]))  # noqa: E731
    return sorted(rows, key=key), sorted(details, key=key)


def _training_row(job: Job, state: str) -> dict[str, Any]:
    machine = json.loads((job.run_dir / "summary.json").read_text()).get("machine")
    return {"method": job.method, "seed": job.seed, "state": state,
            **_training_end(job.run_dir),
            "train_seconds": round(_train_seconds(job.run_dir), 1), "train_machine": machine}


def collect_training(m: Manifest) -> list[dict[str, Any]]:
    """One row per *trained* job (evaluated or not; ``state`` says which, or ``stale``): how its
    training ended (:func:`_training_end`), its training seconds and machine, manifest order.
    A job not trained here but recorded (:func:`collect`) gives its record's row."""
    out = []
    for job in jobs(m):
        if not job.trained:
            if not job.evaluated and (rec := load_record(m, job)) is not None:
                out.append(rec["training"])
            continue
        state = "stale" if config_drift(job) else "evaluated" if job.evaluated else "trained"
        out.append(_training_row(job, state))
    order = {r.method: i for i, r in enumerate(m.rows)}
    return sorted(out, key=lambda r: (order[r["method"]], int(r["seed"])))


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore",
                               lineterminator="\n")
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def _fmean(values: Any) -> float:
    v = list(values)
    return math.fsum(v) / len(v)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN propagates)."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(rows: Sequence[dict[str, Any]], details: Sequence[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """One entry per method: mean and std over seeds of every metric."""
    out: dict[str, dict[str, Any]] = {}
    for r, d in zip(rows, details, strict=True):
        e = out.setdefault(r["method"], {"method": r["method"], "seeds": [], "vals": {}})
        e["seeds"].append(r["seed"])
        for k in ("params", "nnz", "compression", "clean_acc", "pgd50_acc", "autoattack_acc",
                  "train_seconds"):
            e["vals"].setdefault(k, []).append(float(r[k]))
        lk = d.get("log10_kappa_fc")
        e["vals"].setdefault("log10_kappa", []).append(math.nan if lk is None else float(lk))
        e["vals"].setdefault("sanity", []).append(f"{d['sanity_passed']}/{d['sanity_total']}")
        e["vals"].setdefault("eval_seconds", []).append(float(d["eval_seconds"]))
        e.setdefault("machines", set()).add(d.get("machine") or "?")
        e["vals"].setdefault("device", []).append(device_label(d.get("machine")))
        e["vals"].setdefault("train_device", []).append(
            device_label(d.get("train_machine") or d.get("machine")))
        e["machines"].add(d.get("train_machine") or d.get("machine") or "?")
        e.setdefault("sweeps", []).append(d.get("eps_sweep") or [])
    for e in out.values():
        e["stats"] = {k: _mean_std(v) for k, v in e["vals"].items()
                      if k not in ("sanity", "device", "train_device")}
    return list(out.values())


def device_label(machine: str | None) -> str:
    """``"CPU"`` or the GPU's name, from the ``machine`` string that ``sstorch eval`` records."""
    first = (machine or "?").split(";")[0].strip()
    return "CPU" if first.startswith("CPU") else first


def _fmt_seconds(e: dict[str, Any], key: str, device_key: str, usual: str | None = None) -> str:
    """Mean seconds over seeds, one mean per device when seeds ran on different devices.

    A row whose seeds all ran on one device other than ``usual`` (the table's most common
    device for this column) names it: ``"99 (NVIDIA H200)"``.
    """
    devices = e["vals"][device_key]
    if len(set(devices)) == 1:
        mean = f"{e['stats'][key][0]:.0f}"
        return mean if devices[0] == usual or usual is None else f"{mean} ({devices[0]})"
    parts = []
    for dev in dict.fromkeys(devices):
        vals = [v for v, d in zip(e["vals"][key], devices, strict=True) if d == dev]
        parts.append(f"{_fmean(vals):.0f} ({dev}, {len(vals)})")
    return " / ".join(parts)


def _fmt_acc(ms: tuple[float, float], n: int) -> str:
    mean, std = ms
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def render_table(summary_rows: Sequence[dict[str, Any]]) -> str:
    """The markdown results table (accuracies in %, mean ± std over seeds)."""
    head = ("| method | seeds | params | nnz | compression | clean % | PGD-50 % | AutoAttack % "
            "| log10 κ(FC) | sanity | train s | eval s |")
    lines = [head, "|" + "---|" * 12]

    def usual(device_key: str) -> str | None:
        counts = Counter(d for e in summary_rows for d in e["vals"][device_key])
        return counts.most_common(1)[0][0] if counts else None

    usual_train, usual_eval = usual("train_device"), usual("device")
    for e in summary_rows:
        s, n = e["stats"], len(e["seeds"])
        kappa = s["log10_kappa"][0]
        kappa_text = "—" if math.isnan(kappa) else "inf" if math.isinf(kappa) else f"{kappa:.1f}"
        lines.append(
            f"| {e['method']} | {n} | {s['params'][0]:,.0f} | {s['nnz'][0]:,.0f} "
            f"| {s['compression'][0]:.1f}× | {_fmt_acc(s['clean_acc'], n)} "
            f"| {_fmt_acc(s['pgd50_acc'], n)} | {_fmt_acc(s['autoattack_acc'], n)} "
            f"| {kappa_text} | {', '.join(e['vals']['sanity'])} "
            f"| {_fmt_seconds(e, 'train_seconds', 'train_device', usual_train)} "
            f"| {_fmt_seconds(e, 'eval_seconds', 'device', usual_eval)} |")
    machines = sorted({m for e in summary_rows for m in e.get("machines", ())})
    lines += ["", "Seconds are means per run (training: Σ epoch wall time incl. per-epoch "
              "validation; evaluation: everything of `sstorch eval` incl. AutoAttack, ε sweep "
              "and sanity checks); where a row's seeds ran on different devices, one mean per "
              "device (device, seeds), and a row that ran elsewhere than most names its device. "
              "Machines: " + "; ".join(machines) + "."]
    return "\n".join(lines) + "\n"


def _claim_lines(claim: dict[str, Any], by_method: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown bullets that check one manifest claim against the measured means.

    ``within``: ``method`` is at most ``points`` below ``reference`` on ``metric`` (the
    paper's "< 1.5 % loss"); ``beats``: ``method`` is above every one of ``others``;
    ``ablation``: each of ``others`` relative to ``reference`` (the no-constraint variant).
    """
    metric = claim.get("metric", "autoattack_acc")
    label = {"autoattack_acc": "AutoAttack", "pgd50_acc": "PGD-50",
             "clean_acc": "clean"}.get(metric, metric)

    def stat(name: str) -> tuple[float, int] | None:
        e = by_method.get(name)
        return None if e is None else (100 * e["stats"][metric][0], len(e["seeds"]))

    def matched(a: str, b: str) -> str:
        """`` (seed-matched …)`` when the two rows ran different seeds but share some."""
        ea, eb = by_method.get(a), by_method.get(b)
        if ea is None or eb is None or ea["seeds"] == eb["seeds"]:
            return ""
        common = [sd for sd in ea["seeds"] if sd in eb["seeds"]]
        if not common:
            return ""
        pick = lambda e: [100 * v for sd, v in zip(e["seeds"], e["vals"][metric],  # noqa: E731
                                                  strict=True) if sd in common]
        d = _fmean(pick(ea)) - _fmean(pick(eb))
        return f" (seed-matched, seed{'s' if len(common) > 1 else ''} " \
            f"{', '.join(map(str, common))}: {d:+.2f})"

    def spread(*names: str) -> float | None:
        """The larger seed-to-seed std (points) of the rows with ≥ 2 seeds, if any."""
        stds = [100 * by_method[n]["stats"][metric][1] for n in names
                if n in by_method and len(by_method[n]["seeds"]) > 1]
        return max(stds) if stds else None

    def noise(d: float, *names: str) -> str:
        """`` (less than the seed spread ±s)`` when the difference is smaller than it."""
        s = spread(*names)
        return "" if s is None or abs(d) >= s else f", less than the seed spread ±{s:.2f}"

    def fmt(name: str) -> str:
        v = stat(name)
        return f"`{name}` pending" if v is None else f"`{name}` {v[0]:.2f} % ({v[1]} seed" \
            f"{'s' if v[1] > 1 else ''})"

    kind = claim["kind"]
    if kind == "within":
        a, b, pts = claim["method"], claim["reference"], float(claim.get("points", 1.5))
        va, vb = stat(a), stat(b)
        if va is None or vb is None:
            return [f"- {label}: {fmt(a)} vs {fmt(b)}: **pending**"]
        d = va[0] - vb[0]
        verdict = ("**holds, and matches or beats the reference**" if d >= 0 else
                   "**holds**" if d >= -pts else "**does not hold**")
        return [f"- {label}: {fmt(a)} vs {fmt(b)}: {d:+.2f} points{matched(a, b)} → {verdict} "
                f"(bar: at most {pts:g} points below"
                f"{noise(d + pts, a, b).replace('less than', 'the margin to the bar is within')})"]
    if kind == "beats":
        a = claim["method"]
        lines, wins, pending, close = [], 0, 0, 0
        for o in claim.get("others", []):
            va, vo = stat(a), stat(o)
            if va is None or vo is None:
                pending += 1
                lines.append(f"  - vs {fmt(o)}: pending")
                continue
            d = va[0] - vo[0]
            wins += d > 0
            close += bool(noise(d, a, o))
            lines.append(f"  - vs {fmt(o)}: {d:+.2f} points{matched(a, o)} → "
                         f"{'beats' if d > 0 else 'loses'}{noise(d, a, o)}")
        n = len(claim.get("others", []))
        verdict = ("**pending**" if pending and wins == n - pending else
                   "**beats every one**" if wins == n else
                   f"**beats {wins} of {n}**" + (f" ({pending} pending)" if pending else ""))
        if close and verdict != "**pending**":
            verdict += (f" — {close} of the differences {'is' if close == 1 else 'are'} smaller "
                        "than the seed-to-seed spread")
        return [f"- {label}: {fmt(a)} against each baseline: {verdict}", *lines]
    ref = claim["reference"]
    lines = [f"- {label}, relative to {fmt(ref)}:"]
    for o in claim.get("others", []):
        vr, vo = stat(ref), stat(o)
        delta = ("pending" if vr is None or vo is None
                 else f"{vo[0] - vr[0]:+.2f} points{matched(o, ref)}"
                 f"{noise(vo[0] - vr[0], o, ref)}")
        lines.append(f"  - {fmt(o)}: {delta}")
    return lines


def render_claims(claims: Sequence[dict[str, Any]], summary_rows: Sequence[dict[str, Any]]
                  ) -> str:
    """The manifest's claims checked against the table (markdown bullets)."""
    by_method = {e["method"]: e for e in summary_rows}
    lines = []
    for c in claims:
        if c.get("title"):
            lines.append(f"**{c['title']}**\n")
        lines += _claim_lines(c, by_method)
        lines.append("")
    return "\n".join(lines)


def _replace_section(text: str, begin: str, end: str, body: str) -> str:
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def _plots(summary_rows: Sequence[dict[str, Any]], figures: Path,
           log: Callable[[str], None] = print) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sstorch.experiments.report import pareto_front

    figures.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 0.6 + max(4.5, 0.28 * len(summary_rows))),
                                 gridspec_kw={"width_ratios": [1.15, 1]})
    pts = [(e["stats"]["nnz"][0], e["stats"]["autoattack_acc"][0]) for e in summary_rows]
    # Rows whose sizes are within 20 % of each other crowd one spot of the log axis: they are
    # drawn but not labelled there; the right panel names every row.
    crowded = {i for i, (x, _) in enumerate(pts)
               if sum(abs(math.log(x / x2)) < math.log(1.2) for x2, _ in pts) > 2}
    for i, (e, (x, y)) in enumerate(zip(summary_rows, pts, strict=True)):
        ax.errorbar(x, 100 * y, yerr=100 * e["stats"]["autoattack_acc"][1], fmt="o", capsize=3)
        if i not in crowded:
            ax.annotate(e["method"], (x, 100 * y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if crowded:
        x0 = min(pts[i][0] for i in crowded)
        ax.annotate(f"{len(crowded)} rows near {x0:,.0f}: see right", (x0, max(
            100 * pts[i][1] for i in crowded)), textcoords="offset points", xytext=(8, 6),
            fontsize=7, style="italic")
    front = [pts[i] for i in pareto_front(pts)]
    if len(front) > 1:
        ax.plot([p[0] for p in front], [100 * p[1] for p in front], "--", color="gray",
                label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("nonzero parameters (log)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title("Robust accuracy vs model size")
    ax.grid(True, which="both", alpha=0.3)
    order = sorted(range(len(pts)), key=lambda i: pts[i][1])
    for rank, i in enumerate(order):
        e = summary_rows[i]
        n = len(e["seeds"])
        bx.errorbar(100 * pts[i][1], rank, xerr=100 * e["stats"]["autoattack_acc"][1],
                    fmt="o", capsize=3, color="C0" if n > 1 else "C1")
    bx.set_yticks(range(len(order)), [
        f"{summary_rows[i]['method']} ({pts[i][0]:,.0f}; {len(summary_rows[i]['seeds'])} "
        f"seed{'s' if len(summary_rows[i]['seeds']) > 1 else ''})" for i in order], fontsize=7)
    bx.set_xlabel("AutoAttack accuracy (%), mean ± std over seeds")
    bx.set_title("Every row (nonzeros; seeds)")
    bx.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Fashion-MNIST, L∞ attack radius of the runs, full test set", fontsize=9)
    fig.tight_layout()
    paths.append(figures / "pareto_autoattack.png")
    fig.savefig(paths[-1], dpi=150)
    plt.close(fig)

    eps_path = figures / "eps_sweep.png"
    partial = figures / "eps_sweep_partial.png"
    if (missing := [e["method"] for e in summary_rows if not all(e["sweeps"])]) \
            and eps_path.is_file():
        log(f"ε-sweep plot kept as it is: {', '.join(missing)} have no ε-sweep data (records "
            "migrated from CSVs); re-evaluate them (--ignore-records) to redraw it")
        have = [e for e in summary_rows if e["sweeps"] and all(e["sweeps"])]
        if have:  # the rows evaluated since still get their curves, in a figure of their own
            paths.append(_plot_eps_sweep(
                plt, have, partial, "Accuracy under PGD-20 across radii: the rows whose "
                "records keep their ε sweep (mean over seeds)"))
            log(f"ε-sweep plot of {', '.join(e['method'] for e in have)} drawn in {partial}")
        return paths
    if not any(s for e in summary_rows for s in e["sweeps"]):
        log("no ε-sweep data in any run or record: ε-sweep plot not drawn")
        return paths
    paths.append(_plot_eps_sweep(plt, summary_rows, eps_path,
                                 "Accuracy under PGD-20 across radii (mean over seeds)"))
    partial.unlink(missing_ok=True)  # every row is in the full figure now
    return paths


def _plot_eps_sweep(plt: Any, summary_rows: Sequence[dict[str, Any]], path: Path,
                    title: str) -> Path:
    """One curve per row: PGD-20 accuracy (mean over the seeds that have a sweep) against ε."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = plt.get_cmap("tab10" if len(summary_rows) <= 10 else "tab20").colors
    markers, styles = "osD^vP*Xh", ("-", "--", ":")
    for k, e in enumerate(summary_rows):  # no two rows share colour, marker and line style
        sweeps = [s for s in e["sweeps"] if s]
        if not sweeps:
            continue
        eps = [p["eps"] for p in sweeps[0]]
        accs = [_fmean(s[i]["acc"] for s in sweeps) for i in range(len(eps))]
        ax.plot(eps, [100 * a for a in accs], marker=markers[k % len(markers)],
                linestyle=styles[k // len(colors) % len(styles)], color=colors[k % len(colors)],
                label=e["method"])
    ax.set_xlabel("ε (L∞, pixel scale 0–1)")
    ax.set_ylabel("PGD-20 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


@contextmanager
def _report_lock(m: Manifest) -> Iterator[None]:
    """One report writer at a time across workers (``fcntl.flock``; no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: workers may interleave writes
        yield
        return
    m.out_dir.mkdir(parents=True, exist_ok=True)
    with open(m.out_dir / ".report.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_report(m: Manifest, log: Callable[[str], None] = print) -> str | None:
    """Rebuild the CSVs, plots and the markdown table from every evaluated run.

    Workers finishing at once take turns (a file lock), so no file is half written.
    """
    with _report_lock(m):
        return _write_report(m, log)


def _write_report(m: Manifest, log: Callable[[str], None]) -> str | None:
    rows, details = collect(m, log)
    _write_csv(m.csv, rows, CSV_COLUMNS)
    _write_csv(m.details_csv, details, DETAIL_COLUMNS)
    if m.training_csv is not None:
        _write_csv(m.training_csv, collect_training(m), TRAINING_COLUMNS)
    if not rows:
        log(f"no evaluated runs yet; wrote the empty {m.csv}")
        return None
    summary_rows = summarize(rows, details)
    table = render_table(summary_rows)
    _plots(summary_rows, m.figures, log)
    if m.markdown is not None and m.markdown.is_file():
        text = _replace_section(m.markdown.read_text(), TABLE_BEGIN, TABLE_END, table)
        claims = render_claims(m.claims, summary_rows)
        m.markdown.write_text(_replace_section(text, CLAIMS_BEGIN, CLAIMS_END, claims))
    log(f"{len(rows)} runs → {m.csv}, {m.details_csv}, {m.figures}/")
    return table


def selected(job: Job, only: set[str] | None) -> bool:
    """Whether ``--only`` (``method`` or ``method:seed`` items; None = all) selects ``job``."""
    return only is None or job.method in only or f"{job.method}:{job.seed}" in only


def _work(m: Manifest, log: Callable[[str], None], only: set[str] | None = None,
          ignore_records: bool = False) -> int:
    """Run every job this worker can take; returns the number of jobs left undone.

    A job with a current record (:func:`load_record`) counts as done unless ``ignore_records``.
    A job that raises (a diverged run, a bad config) is logged to ``run_dir/sweep-error.txt``
    and skipped for the rest of this call, so one failure does not stop the sweep; the next
    call retries it.
    """
    failed: set[Path] = set()
    recorded = set() if ignore_records else {
        j.run_dir for j in jobs(m) if not j.evaluated and load_record(m, j) is not None}

    def todo() -> list[Job]:
        return [j for j in jobs(m) if not j.evaluated and j.run_dir not in failed
                and j.run_dir not in recorded and selected(j, only)]

    while True:
        pending = todo()
        if not pending:
            return len(failed)
        took = False
        for job in pending:
            untrained = [d for d in job.needs if not (d / "summary.json").is_file()]
            if untrained:
                if recorded_dep := [d for d in untrained if d in recorded]:
                    dep = recorded_dep[0]  # recorded elsewhere, not trained here
                    failed.add(job.run_dir)
                    log(f"!! {job.method} seed {job.seed} starts from {dep}, which "
                        "is recorded but not trained on this machine: train it first with "
                        f"--only {dep.parent.name}:{job.seed} --ignore-records")
                continue  # its starting point or teacher is not trained yet
            lock = _try_lock(job.run_dir)
            if lock is None:
                continue
            try:
                if not job.evaluated:
                    took = True
                    run_job(job, m, log)
                (job.run_dir / "sweep-error.txt").unlink(missing_ok=True)
            except Exception as exc:  # recorded, reported, retried by the next call
                failed.add(job.run_dir)
                (job.run_dir / "sweep-error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
                log(f"!! {job.method} seed {job.seed} failed: {type(exc).__name__}: {exc} "
                    f"(kept in {job.run_dir / 'sweep-error.txt'}; the next call retries it)")
            finally:
                lock.unlink(missing_ok=True)
            write_report(m, log)
            break
        if not took:
            waiting = todo()
            # held by another worker, or waiting for a starting point another worker trains
            busy = [j for j in waiting if _held(j.run_dir) or any(_held(d) for d in j.needs)]
            if not busy:
                return len(waiting) + len(failed)
            time.sleep(30)  # others hold the remaining jobs or their dependencies


def handle_stale(m: Manifest, only: set[str] | None, move: bool,
                 log: Callable[[str], None] = print) -> None:
    """Refuse to run over stale runs (ValueError naming each drift), or rename them aside;
    never one a live worker holds (its ``.lock``), and then nothing is moved."""
    stale = [(j, d) for j in jobs(m) if selected(j, only) and (d := config_drift(j))]
    if not stale:
        return
    if not move:
        lines = "\n".join(f"  {j.run_dir}: {drift_text(d)}" for j, d in stale)
        raise ValueError(f"{len(stale)} run(s) were trained with another config than their "
                         f"row's config now:\n{lines}\nmove them away, set a new out_dir in "
                         "sweep.yaml, or pass --move-stale (renames each to "
                         "<run>.stale-<time>; nothing is deleted)")
    busy = [j.run_dir for j, _ in stale if _held(j.run_dir)]
    if busy:  # renaming would carry off the live worker's lock and files mid-run
        lines = "\n".join(f"  {d} (worker pid {(d / '.lock').read_text().split()[0]})"
                           for d in busy)
        raise ValueError(f"{len(busy)} stale run(s) are held by a live sweep worker:\n{lines}\n"
                         "stop that worker (kill -TERM <pid>) and run --move-stale again; "
                         "nothing was moved")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for j, _ in stale:
        target = j.run_dir.with_name(f"{j.run_dir.name}.stale-{stamp}")
        j.run_dir.rename(target)
        log(f"moved stale {j.run_dir} → {target}")


def main_sweep(argv: list[str]) -> int:
    """``sstorch sweep DIR [--workers N] [--report-only] [--list] [--only JOBS] [--move-stale]``."""
    p = argparse.ArgumentParser(
        prog="sstorch sweep",
        description="Train and evaluate every (method, seed) of DIR/sweep.yaml, resuming "
        "whatever a previous call left unfinished, then rebuild the CSV, plots and table.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel worker processes sharing the queue (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: cores / workers)")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild the CSV, plots and table from finished runs")
    p.add_argument("--list", action="store_true", help="print the jobs and their state")
    p.add_argument("--only", default=None, metavar="JOBS",
                   help="comma-separated methods (all their seeds) or method:seed items to "
                   "run (default: every job)")
    p.add_argument("--ignore-records", action="store_true",
                   help="rerun jobs that have a record but no run directory here (their "
                   "new records replace the old ones)")
    p.add_argument("--move-stale", action="store_true",
                   help="rename runs trained with another config than their row's now to "
                   "<run>.stale-<time> (nothing is deleted) and retrain them")
    args = p.parse_args(argv)
    args.directory = expand_path(args.directory, "DIR")
    m = load_manifest(args.directory)
    only = None
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        known = {r.method for r in m.rows} | {f"{j.method}:{j.seed}" for j in jobs(m)}
        if unknown := only - known:
            raise ValueError(f"--only names {sorted(unknown)}, neither rows nor method:seed "
                             f"jobs of {args.directory}/sweep.yaml (see --list)")
    if args.list:
        for j in jobs(m):
            state = ("stale" if config_drift(j) else "done" if j.evaluated
                     else "trained" if j.trained
                     else "recorded" if load_record(m, j) is not None else "pending")
            line = f"{j.method:<28} seed {j.seed}  {state:<8} {j.run_dir}"
            if state == "trained" and (prog := evaluation_progress(j.run_dir)) is not None:
                line += (f"  (evaluation under way: {prog[1]:,} test images in {prog[0]} "
                         f"journalled batch{'es' if prog[0] != 1 else ''})")
            print(line)
        return 0
    if args.report_only:
        table = write_report(m)
        if table:
            print(table)
        return 0
    handle_stale(m, only, move=args.move_stale)
    if args.workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {args.workers}")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    if args.workers == 1:
        import torch

        torch.set_num_threads(threads)
        left = _work(m, print, only, args.ignore_records)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "sstorch", "sweep", args.directory, "--threads",
               str(threads), *(["--only", args.only] if args.only else []),
               *(["--ignore-records"] if args.ignore_records else [])]
        procs = [subprocess.Popen(cmd, env=env) for _ in range(args.workers)]
        for proc in procs:
            proc.wait()
        left = len([j for j in jobs(m) if not j.evaluated and selected(j, only) and (
            args.ignore_records or load_record(m, j) is None)])
    table = write_report(m)
    if table:
        print(table)
    if left:
        print(f"{left} job(s) failed or could not run (see sweep-error.txt in their run "
              "directories); call the command again to retry them", file=sys.stderr)
        return 1
    return 0
