"""The sweep manifest ``DIR/sweep.yaml`` and the (method, seed) jobs it defines.

``DIR`` holds one training config per method (``<method>.yaml``) and ``sweep.yaml``; see
:mod:`sstorch.experiments.sweep` for its keys. :func:`load_manifest` checks it and
:func:`jobs` lists its jobs seed-major: every method's seed 0 before any seed 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sstorch.config import yaml_load

CLAIM_KINDS = {"within", "beats", "ablation"}
EVAL_KEYS = {"pgd_steps", "pgd_restarts", "n"}
MANIFEST_KEYS = {"out_dir", "csv", "details_csv", "training_csv", "figures", "markdown",
                 "reference", "eval", "rows", "claims", "records"}
ROW_KEYS = {"method", "seeds", "init_from", "reference", "eval", "teacher"}


@dataclass
class Row:
    """One row of the manifest: a method (``DIR/<method>.yaml``) and the seeds it runs."""

    method: str
    seeds: list[int]
    init_from: str | None = None
    reference: str | None = None  # the row's family's dense model (default: the manifest's)
    teacher: str | None = None  # the row whose trained run (same seed) it is distilled from
    eval: dict[str, Any] = field(default_factory=dict)  # overrides of the manifest's eval


@dataclass
class Manifest:
    """``DIR/sweep.yaml``: where runs, tables, figures and records go, and the rows."""

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


@dataclass
class Job:
    """One (method, seed): its config, run directory, starting point, teacher and eval."""

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


def _rows(path: Path, root: Path, tree: dict[str, Any]) -> list[Row]:
    """The manifest's ``rows``, each checked: a ``method`` with its ``<method>.yaml``, known
    keys, an ``eval`` of :data:`EVAL_KEYS`, and ``init_from`` / ``teacher`` / ``reference``
    naming other rows."""
    rows = []
    for i, r in enumerate(tree.get("rows") or []):
        if not isinstance(r, dict) or "method" not in r:
            raise ValueError(f"{path}: rows[{i}] needs a 'method'")
        if not (root / f"{r['method']}.yaml").is_file():
            raise FileNotFoundError(f"{path}: rows[{i}] names {r['method']!r} but "
                                    f"{root / (r['method'] + '.yaml')} does not exist")
        seeds = [int(s) for s in r.get("seeds", [0])]
        if unknown := set(r) - ROW_KEYS:
            raise ValueError(f"{path}: rows[{i}] has unknown keys {sorted(unknown)}; valid: "
                             "method, seeds, init_from, teacher, reference, eval")
        row_eval = r.get("eval") or {}
        if not isinstance(row_eval, dict) or set(row_eval) - EVAL_KEYS:
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
    return rows


def _claims(path: Path, tree: dict[str, Any], methods: set[str]) -> list[dict[str, Any]]:
    """The manifest's ``claims``, each of a kind in :data:`CLAIM_KINDS` and naming rows."""
    claims = list(tree.get("claims") or [])
    for i, c in enumerate(claims):
        kind = c.get("kind") if isinstance(c, dict) else None
        if kind not in CLAIM_KINDS:
            raise ValueError(f"{path}: claims[{i}] needs kind one of {sorted(CLAIM_KINDS)}")
        named = [c.get("method"), c.get("reference"), *(c.get("others") or [])]
        if missing := [n for n in named if n is not None and n not in methods]:
            raise ValueError(f"{path}: claims[{i}] names {missing}, not rows")
    return claims


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
    if unknown := set(tree) - MANIFEST_KEYS:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(MANIFEST_KEYS)}")
    rows = _rows(path, root, tree)
    methods = {r.method for r in rows}
    reference = tree.get("reference", rows[0].method)
    if reference not in methods:
        raise ValueError(f"{path}: reference {reference!r} is not a row")
    ev = {"pgd_steps": 50, "pgd_restarts": 1, "n": None, **(tree.get("eval") or {})}
    if bad := set(ev) - EVAL_KEYS:
        raise ValueError(f"{path}: eval has unknown keys {sorted(bad)}; valid: {sorted(EVAL_KEYS)}")
    claims = _claims(path, tree, methods)
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


def job_overrides(job: Job) -> list[str]:
    """The ``--set`` items that turn the row's config into this job's training config."""
    overrides = [f"seed={job.seed}", f"out_dir={job.run_dir.parent}", f"name={job.run_dir.name}"]
    if job.init_from is not None:
        overrides.append(f"init_from={job.init_from}")
    if job.teacher is not None:
        overrides.append(f"distill.teacher={job.teacher}")
    return overrides


def selected(job: Job, only: set[str] | None) -> bool:
    """Whether ``--only`` (``method`` or ``method:seed`` items; None = all) selects ``job``."""
    return only is None or job.method in only or f"{job.method}:{job.seed}" in only
