"""The rows of the sweep's tables, gathered from run directories and records.

:func:`collect` gives one CSV row and one detail row per evaluated job; :func:`collect_training`
one row per trained job. Stale runs and records are left out, so no table mixes two recipes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sstorch.config import drift_text
from sstorch.experiments.manifest import Job, Manifest, jobs
from sstorch.experiments.records import (
    load_record,
    read_record,
    record_drift,
    record_path,
    save_record,
)
from sstorch.experiments.stages import (
    KAPPA_RULE,
    config_drift,
    log10_kappa_fc,
    train_seconds,
    training_end,
)
from sstorch.io.fsutil import atomic_write_text


def _structure(m: Manifest, method: str) -> tuple[int, int]:
    """``(parameters, FC parameters)`` of ``method``'s model as its config builds it (before any
    pruning: pruning zeroes FC weights, so a row's FC nonzeros are its nonzeros minus the rest)."""
    from sstorch.config import load_config
    from sstorch.data import DATASET_INFO, canonical_name
    from sstorch.models import build_model
    from sstorch.structure.summary import summary

    cfg = load_config(m.root / f"{method}.yaml")
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    s = summary(build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std))
    return s.total_params, s.fc_params


def _reference(m: Manifest, method: str) -> str:
    """The dense row ``method``'s compression is measured against: its row's ``reference``,
    else the manifest's."""
    row = next((r for r in m.rows if r.method == method), None)
    return row.reference if row is not None and row.reference else m.reference


def _with_fc_compression(m: Manifest, detail: dict[str, Any], nnz: int,
                         cache: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``detail`` with ``fc_compression``: the reference's FC parameters / the row's FC
    nonzeros (the table's ``compression`` is the whole network's)."""
    for name in (detail["method"], _reference(m, detail["method"])):
        if name not in cache:
            cache[name] = _structure(m, name)
    params, fc = cache[detail["method"]]
    fc_nnz = nnz - (params - fc)
    ref_fc = cache[_reference(m, detail["method"])][1]
    return {**detail, "fc_compression": round(ref_fc / fc_nnz, 2) if fc_nnz > 0 else None}


def collect(m: Manifest, log: Callable[[str], None] = print
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """CSV rows (``CSV_COLUMNS``) and detail rows of every evaluated job, in manifest order.

    A job evaluated in its run directory gives its rows from there (and, where the manifest
    keeps ``records``, refreshes its record); a job without one gives the rows of its record, so
    a fresh checkout rebuilds the whole table from the committed records. Stale runs and records
    (made with another config than their row's now,
    :func:`~sstorch.experiments.stages.config_drift`) are left out, with a line to ``log``, so
    one table never mixes two recipes.
    """
    cache: dict[str, tuple[int, int]] = {}
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
            ref = _reference(m, job.method)  # the manifest's of now, as for a run directory
            if ref not in cache:
                cache[ref] = _structure(m, ref)
            nnz = int(rec["row"]["nnz"])
            rows.append({**rec["row"], "compression": round(cache[ref][0] / nnz, 2)})
            details.append(_with_fc_compression(m, rec["details"], nnz, cache))
            continue
        if drift := config_drift(job):
            log(f"!! left out of the table: {job.run_dir} is stale ({drift_text(drift)})")
            continue
        ev = json.loads((job.run_dir / "eval.json").read_text())
        sw = json.loads((job.run_dir / "sweep.json").read_text())
        ref = _reference(m, job.method)
        if ref not in cache:
            cache[ref] = _structure(m, ref)
        if sw.get("kappa_rule") != KAPPA_RULE:  # written by an older sstorch: redo it once
            sw["log10_kappa_fc"], sw["kappa_rule"] = log10_kappa_fc(job.run_dir), KAPPA_RULE
            atomic_write_text(job.run_dir / "sweep.json", json.dumps(sw, indent=2) + "\n")
        attacks = ev["attacks"]
        pgd_key = "pgd"
        rows.append({
            "method": job.method, "params": ev["params"], "nnz": ev["nnz"],
            "compression": round(cache[ref][0] / ev["nnz"], 2), "seed": job.seed,
            "clean_acc": ev["clean_acc"], "pgd50_acc": attacks[pgd_key]["acc"],
            "autoattack_acc": attacks["autoattack"]["acc"],
            "train_seconds": round(train_seconds(job.run_dir), 3),
        })
        sanity = ev.get("sanity", [])
        trained_on = json.loads((job.run_dir / "summary.json").read_text()).get("machine")
        details.append({
            "method": job.method, "seed": job.seed, "log10_kappa_fc": sw.get("log10_kappa_fc"),
            "sanity_passed": sum(bool(c["passed"]) for c in sanity),
            "sanity_total": len(sanity), "eval_n": ev["n"],
            "eval_seconds": round(sw["eval_seconds"], 1), **training_end(job.run_dir),
            "machine": ev.get("machine"),
            # older runs did not record where they were trained: the evaluation machine then
            "train_machine": trained_on or ev.get("machine"),
            "date": ev.get("date"), "eps_sweep": ev.get("eps_sweep"),
        })
        save_record(m, job, rows[-1], details[-1], _training_row(job, "evaluated"))
        details[-1] = _with_fc_compression(m, details[-1], int(ev["nnz"]), cache)
    order = {r.method: i for i, r in enumerate(m.rows)}
    key = lambda r: (order[r["method"]], int(r["seed"]))  # noqa: E731
    return sorted(rows, key=key), sorted(details, key=key)


def _training_row(job: Job, state: str) -> dict[str, Any]:
    """A row of the training table: how the job's training ended, its seconds and machine."""
    machine = json.loads((job.run_dir / "summary.json").read_text()).get("machine")
    return {"method": job.method, "seed": job.seed, "state": state,
            **training_end(job.run_dir),
            "train_seconds": round(train_seconds(job.run_dir), 1), "train_machine": machine}


def collect_training(m: Manifest) -> list[dict[str, Any]]:
    """One row per *trained* job (evaluated or not; ``state`` says which, or ``stale``): how its
    training ended (:func:`~sstorch.experiments.stages.training_end`), its training seconds and
    machine, manifest order. A job not trained here but recorded (:func:`collect`) gives its
    record's row."""
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
