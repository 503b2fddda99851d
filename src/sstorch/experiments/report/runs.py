"""Reading run directories for ``sstorch report``: :class:`Run` and :func:`load_run_record`."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sstorch.training.results import parse_pgd_key

DASH = "—"
EPS_LABEL = "ε (L∞, pixel scale 0–1)"






def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun the command that wrote it "
                         "or remove the file") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML ({exc})") from exc
    return data if isinstance(data, dict) else {}


def _num(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def structure_of(record: Any) -> str | None:
    """The layer structure a summary / eval record or a config's model section names, in the
    current key (``structure``) or the legacy ones (``separable`` + ``baseline``)."""
    if not isinstance(record, dict):
        return None
    if record.get("structure") is not None:
        return str(record["structure"])
    if record.get("separable") is None:
        return None
    baseline = record.get("baseline")
    if baseline not in (None, "none"):
        return str(baseline)
    return "separable" if record["separable"] else "dense"


def _read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and "epoch" not in reader.fieldnames:
            raise ValueError(f"{path} has no 'epoch' column (columns: {reader.fieldnames}); "
                             "expected the metrics.csv written by `sstorch train`")
        return [{k: _num(v) for k, v in row.items() if k is not None} for row in reader]


@dataclass
class Run:
    """One run directory's results, with every table value resolved to its best source.

    Sources, most trusted first: ``eval.json`` (``sstorch eval``), ``summary.json`` (final
    evaluation of ``sstorch train``), ``config.yaml`` and ``metrics.csv``. Accuracies are
    fractions in [0, 1]; ``None`` where no source has the value.
    """

    path: Path
    label: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    eval: dict[str, Any] | None
    metrics: list[dict[str, float]] = field(default_factory=list)

    def _get(self, eval_key: str, summary_key: str | None = None) -> Any:
        for src, key in ((self.eval, eval_key), (self.summary, summary_key or eval_key)):
            if src is not None and src.get(key) is not None:
                return src[key]
        return None

    @property
    def model(self) -> str:
        name = self._get("model") or self.config.get("model", {}).get("name")
        structure = next((s for s in (structure_of(self.eval), structure_of(self.summary),
                                      structure_of(self.config.get("model")))
                          if s is not None), None)
        return f"{name or DASH}{'' if structure is None else f' ({structure})'}"

    @property
    def dataset(self) -> str | None:
        return self._get("dataset") or self.config.get("data", {}).get("name")

    @property
    def eps(self) -> float | None:
        eps = self._get("eps")
        return eps if eps is not None else self.config.get("attack", {}).get("eps")

    @property
    def n(self) -> int | None:
        return self._get("n", "test_n")

    @property
    def params(self) -> int | None:
        return self._get("params")

    @property
    def nnz(self) -> int | None:
        return self._get("nnz")

    @property
    def compression(self) -> float | None:
        return self._get("compression")

    @property
    def clean(self) -> float | None:
        return self._get("clean_acc", "test_clean_acc")

    @property
    def attacks(self) -> dict[str, dict[str, Any]]:
        a = (self.eval or {}).get("attacks") or {}
        return {k: v for k, v in a.items() if isinstance(v, dict) and v.get("acc") is not None}

    @property
    def pgd(self) -> tuple[float, str] | None:
        """PGD accuracy and its label (``PGD-20``), from ``eval.json`` else ``summary.json``."""
        pgds = {k: v for k, v in self.attacks.items() if k.lower().startswith("pgd")}
        if pgds:
            name, entry = min(pgds.items(), key=lambda kv: kv[1]["acc"])
            steps = entry.get("steps") or "".join(re.findall(r"\d+", name))
            return entry["acc"], (f"PGD-{steps}" if steps else name.upper())
        for key, value in (self.summary or {}).items():
            pgd_steps = parse_pgd_key(key)
            if pgd_steps is not None and value is not None:
                return value, f"PGD-{pgd_steps}"
        return None

    @property
    def autoattack(self) -> float | None:
        for name, entry in self.attacks.items():
            if re.sub(r"[^a-z]", "", name.lower()) == "autoattack":
                return entry["acc"]
        return None

    @property
    def robust(self) -> float | None:
        """Worst case over the attacks run: ``eval.json`` ``robust_acc``, else the lowest."""
        if self.eval is not None and self.eval.get("robust_acc") is not None:
            return self.eval["robust_acc"]
        accs = [e["acc"] for name, e in self.attacks.items() if name != "clean"]
        if accs:
            return min(accs)
        return self.pgd[0] if self.pgd else None

    @property
    def kappa_columns(self) -> list[str]:
        return [k for k in (self.metrics[0] if self.metrics else {}) if k.startswith("kappa/")]

    @property
    def log10_kappa(self) -> tuple[float, str] | None:
        """``log10 Π_layers κ(W_l)`` and its source: ``eval.json``, else the layers of
        ``summary.json`` (the evaluated checkpoint), else the last row of ``metrics.csv``.

        Kept as a logarithm so that a deep model's product cannot overflow: ``inf`` means
        a rank-deficient layer (κ = ∞), never an overflow; ``nan`` an unknown layer κ.
        """
        if self.eval is not None and self.eval.get("kappa") is not None:
            return _log10_prod([self.eval["kappa"]]), "eval.json"
        layers = (self.summary or {}).get("layers") or []
        kappas = [layer["kappa"] for layer in layers if layer.get("kappa") is not None]
        if kappas:
            return _log10_prod(kappas), "summary.json layers"
        if self.kappa_columns:
            return (_log10_prod([self.metrics[-1][c] for c in self.kappa_columns]),
                    f"metrics.csv epoch {self.metrics[-1]['epoch']:g}")
        return None

    @property
    def sanity(self) -> list[dict[str, Any]]:
        return list((self.eval or {}).get("sanity") or [])

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.sanity if not c.get("passed")]


def _log10_prod(values: Sequence[float]) -> float:
    vals = [float(v) for v in values]
    if any(math.isnan(v) or v <= 0 for v in vals):
        return math.nan
    return sum(math.log10(v) for v in vals)  # inf if any κ is inf


def load_run_record(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory; ``ValueError`` if ``path`` is not one or a file is corrupt."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{p} is not a directory; expected a run directory made by "
                         "`sstorch train` (holding summary.json or metrics.csv)")
    summary, evaluation = _read_json(p / "summary.json"), _read_json(p / "eval.json")
    metrics = _read_metrics(p / "metrics.csv")
    if summary is None and evaluation is None and not (p / "metrics.csv").is_file():
        raise ValueError(f"{p} is not a run directory: it has no summary.json and no "
                         "metrics.csv; expected a directory made by `sstorch train` "
                         "(e.g. runs/<name>/)")
    return Run(p, label or p.name, _read_yaml(p / "config.yaml"), summary, evaluation, metrics)


def _labels(paths: Sequence[Path]) -> list[str]:
    """Directory names, lengthened with the parent (then an index) where they collide."""
    names = [p.resolve().name for p in paths]
    labels = [n if names.count(n) == 1 else "/".join(p.resolve().parts[-2:])
              for n, p in zip(names, paths, strict=True)]
    return [lab if labels.count(lab) == 1 else f"{lab}#{i + 1}" for i, lab in enumerate(labels)]




