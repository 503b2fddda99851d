"""Run records: ``<records>/<method>/seed<k>.json``, what the table keeps of one evaluated run.

A record holds the run's config as trained and its CSV, detail and training rows, so a fresh
checkout rebuilds the whole table from the committed records. Records are written with
``json.dumps(indent=1, sort_keys=True)`` through :func:`sstorch.io.fsutil.atomic_write_text`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sstorch.experiments.manifest import Job, Manifest, job_overrides
from sstorch.io.fsutil import atomic_write_text

RECORD_KEYS = ("config", "details", "row", "training")


def record_path(m: Manifest, method: str, seed: int) -> Path | None:
    """``<records>/<method>/seed<k>.json``: what the table keeps of one evaluated run, or None
    when the manifest keeps no records."""
    return None if m.records is None else m.records / method / f"seed{seed}.json"


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
    """:func:`~sstorch.experiments.stages.config_drift` for a record: its saved config
    against the row's config of now."""
    import tempfile

    from sstorch.config import config_drift as drift
    from sstorch.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "config.yaml"
        saved.write_text(yaml.safe_dump(rec.get("config") or {}))
        return drift(saved, load_config(job.config, job_overrides(job)))


def save_record(m: Manifest, job: Job, row: dict[str, Any], details: dict[str, Any],
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
