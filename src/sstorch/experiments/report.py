"""Comparison report across runs: one markdown table and four plots.

``sstorch report RUN_DIR [RUN_DIR ...] [--out DIR]`` reads what ``sstorch train``
(``config.yaml``, ``metrics.csv``, ``summary.json``) and ``sstorch eval`` (``eval.json``) left in
each run directory and writes into the output directory (default: ``reports/`` beside the first
run directory's parent, e.g. ``runs/a`` → ``reports/``):

* ``report.md`` — one row per run: model, dataset, ε, test examples, parameters, compression,
  nonzeros, clean / PGD / AutoAttack / worst-case robust accuracy, ``κ = Π_layers κ(W_l)`` and the
  sanity checks of ``sstorch eval``; below it the failed checks, the Pareto front and the plots.
* ``robust_vs_eps.png`` — robust accuracy against the L∞ budget ε (``eval.json`` ``eps_sweep``).
* ``accuracy_vs_params.png`` — clean and robust accuracy against parameters (log scale) with the
  Pareto front: the runs no other run beats with at most as many parameters.
* ``training_curves.png`` — training loss and validation clean / robust accuracy per epoch.
* ``kappa.png`` — each separable layer's ``κ(W) = Π_k κ(U_k)`` per epoch (log scale).

``eval.json`` is optional: without it the numbers come from ``summary.json`` (the final PGD
evaluation of ``sstorch train``) and AutoAttack and the sanity checks read "—".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

from sstorch.io.fsutil import (
    FileSystemError,
    atomic_write,
    atomic_write_text,
    expand_path,
    fs_errors,
)

__all__ = ["Run", "load_run", "main_report", "pareto_front", "render_markdown", "write_report"]

DASH = "—"
EPS_LABEL = "ε (L∞, pixel scale 0–1)"
PLOTS = {  # file name → title in report.md
    "robust_vs_eps.png": "Robust accuracy vs ε",
    "accuracy_vs_params.png": "Accuracy vs parameters",
    "training_curves.png": "Training curves",
    "kappa.png": "Condition number κ of the separable layers",
}
DPI = 150
MAX_KAPPA_LINES = 10  # more layers than this: κ plot shows their spread, median and worst


# --------------------------------------------------------------------------- reading runs


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
        sep = self._get("separable")
        if sep is None:
            sep = self.config.get("model", {}).get("separable")
        kind = "" if sep is None else (" (separable)" if sep else " (dense)")
        return f"{name or DASH}{kind}"

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
            m = re.fullmatch(r"test_pgd(\d+)_acc", key)
            if m and value is not None:
                return value, f"PGD-{m.group(1)}"
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


def load_run(path: str | Path, label: str | None = None) -> Run:
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


# --------------------------------------------------------------------------- Pareto front


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(params, acc)`` points, by increasing ``params``.

    Point ``q`` dominates ``p`` when ``q.params ≤ p.params`` and ``q.acc ≥ p.acc`` with one
    inequality strict (fewer parameters for at least the accuracy). Points whose accuracy is
    NaN or missing are never on the front; equal points are both kept.
    """
    ok = [i for i, (n, a) in enumerate(points)
          if n is not None and a is not None and not math.isnan(a) and not math.isnan(n)]

    def dominated(i: int) -> bool:
        (n, a) = points[i]
        return any(points[j][0] <= n and points[j][1] >= a and points[j] != points[i]
                   for j in ok)

    return sorted((i for i in ok if not dominated(i)), key=lambda i: (points[i][0], -points[i][1]))


# --------------------------------------------------------------------------- markdown


def _pct(x: float | None) -> str:
    return DASH if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _int(x: float | None) -> str:
    return DASH if x is None else f"{int(x):,}"


def _eps(x: float | None) -> str:
    if x is None:
        return DASH
    s = f"{x:.4g}"
    k = round(x * 255)
    return f"{k}/255" if float(s) != x and abs(x * 255 - k) < 1e-6 else s


def _kappa(log10_k: tuple[float, str] | None) -> str:
    """``κ`` from its log10: ``12.5``, ``3.16e+04``, ``∞`` (rank deficient), ``—``."""
    if log10_k is None or math.isnan(log10_k[0]):
        return DASH
    lg = log10_k[0]
    if math.isinf(lg):
        return "∞"
    if lg < 3:
        return f"{10 ** lg:.3g}"
    exp = math.floor(lg)
    mant = 10 ** (lg - exp)
    if round(mant, 2) >= 10:
        mant, exp = mant / 10, exp + 1
    return f"{mant:.2f}e+{exp:02d}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _sanity(run: Run) -> str:
    if not run.sanity:
        return DASH
    n, failed = len(run.sanity), run.failed_checks
    if not failed:
        return f"✓ {n}/{n}"
    return f"✗ {n - len(failed)}/{n}: " + ", ".join(str(c.get("name")) for c in failed)


def _row(run: Run, out_dir: Path) -> list[str]:
    try:
        link = Path(os.path.relpath(run.path.resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive
        link = run.path.resolve().as_posix()
    pgd = run.pgd
    compression = run.compression
    return [
        f"[{run.label}]({link})" + ("" if run.eval is not None else " †"),
        run.model, run.dataset or DASH, _eps(run.eps), _int(run.n), _int(run.params),
        DASH if compression is None else f"{compression:,.1f}×", _int(run.nnz),
        _pct(run.clean), DASH if pgd is None else f"{_pct(pgd[0])} ({pgd[1]})",
        _pct(run.autoattack), _pct(run.robust), _kappa(run.log10_kappa), _sanity(run),
    ]


HEADER = ["run", "model", "dataset", "ε", "n", "parameters", "compression", "nnz", "clean",
          "PGD", "AutoAttack", "robust", "κ", "sanity"]
TEXT_COLUMNS = {"run", "model", "dataset", "sanity"}  # left-aligned; numbers right-aligned


def render_markdown(runs: Sequence[Run], out_dir: Path, notes: dict[str, str] | None = None,
                    ) -> str:
    """The text of ``report.md``; ``notes`` maps a plot file name to a line shown under it."""
    notes = notes or {}
    lines = [
        "# sstorch report", "",
        f"{len(runs)} run(s), generated {datetime.now():%Y-%m-%d %H:%M} by `sstorch report`. "
        "Accuracies are on the test set (n images) at the run's L∞ budget ε (pixel scale 0–1); "
        "**robust** is the worst case over the attacks run; **κ** is the product over the "
        "separable layers of κ(W) = σ_max/σ_min.", "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" if h in TEXT_COLUMNS else "--:" for h in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in _row(r, out_dir)) + " |" for r in runs]
    lines.append("")
    if any(r.eval is None for r in runs):
        lines += ["† no eval.json: numbers from summary.json (the final PGD evaluation of "
                  "`sstorch train`). PGD alone overestimates robust accuracy, so compare these "
                  "runs with the others (and read the Pareto front) with care; run "
                  "`sstorch eval RUN_DIR` for AutoAttack and the sanity checks.", ""]
    failed = [r for r in runs if r.failed_checks]
    if failed:
        lines += ["## Failed sanity checks", "",
                  "A failed check means the robust accuracy above may be overestimated "
                  "(e.g. gradient masking); do not trust it until the check passes.", ""]
        for r in failed:
            lines += [f"### {r.label}: {_sanity(r)}", ""]
            for c in r.sanity:
                mark = "✓" if c.get("passed") else "✗"
                lines.append(f"- {mark} **{c.get('name')}**: {c.get('detail', '')}")
            lines.append("")
    points = [(r.params, r.robust) for r in runs]
    front = pareto_front(points)
    if front:
        dominated = [r.label for i, r in enumerate(runs) if i not in front]
        lines += ["## Pareto front", "",
                  "Non-dominated runs (no other run has at most as many parameters and at least "
                  "as high robust accuracy), by size: "
                  + ", ".join(f"{runs[i].label} ({_int(points[i][0])}, {_pct(points[i][1])})"
                              for i in front) + ".", "",
                  "Dominated: " + (", ".join(dominated) if dominated else "none") + ".", ""]
    lines += ["## Plots", ""]
    for name, title in PLOTS.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
        if notes.get(name):
            lines += [notes[name], ""]
    lines += ["## Sources", ""]
    for r in runs:
        ev = r.eval or {}
        extra = ", ".join(f"{k} {ev[k]}" for k in ("checkpoint", "seed", "date", "machine")
                          if ev.get(k) is not None)
        k = r.log10_kappa
        lines.append(f"- **{r.label}**: `{r.path.resolve()}`; "
                     + ("eval.json" + (f" ({extra})" if extra else "") if r.eval is not None
                        else "summary.json" if r.summary is not None else "metrics.csv only")
                     + (f"; κ from {k[1]}" if k else ""))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _color(i: int) -> tuple[float, ...]:
    return colormaps["tab10"](i % 10)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.4", wrap=True)


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)


def _log_axis(ax: Axes, which: str, values: Sequence[float], minor_labels: bool) -> None:
    """Log scale on axis ``which`` ("x" or "y") over whole decades around ``values`` (so
    labelled powers of ten are always in view), with plain numbers (``1,000``, not ``10³``)."""
    vals = [v for v in values if math.isfinite(v) and v > 0]
    getattr(ax, f"set_{which}scale")("log")
    if vals:
        # a margin so a value near a power of ten does not sit on the frame
        lo = math.floor(math.log10(min(vals) / 1.5))
        hi = math.ceil(math.log10(max(vals) * 1.5))
        getattr(ax, f"set_{which}lim")(10.0 ** lo, 10.0 ** max(hi, lo + 1))
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if 1 <= v < 1e10
                                           else f"{v:g}"))
    axis.set_minor_formatter(
        LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)) if minor_labels
        else NullFormatter())


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format=path.suffix[1:]))


def plot_robust_vs_eps(runs: Sequence[Run], path: Path) -> str:
    """Robust accuracy against ε, one line per run and attack of ``eps_sweep``; a run without
    a sweep is one marker at its ε. Returns a note for report.md."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    markers, styles = "osD^vP*X", ["-", "--", ":", "-."]
    plotted, single = False, []
    for i, run in enumerate(runs):
        sweep = [s for s in (run.eval or {}).get("eps_sweep") or []
                 if s.get("eps") is not None and s.get("acc") is not None]
        attacks = list(dict.fromkeys(str(s.get("attack", "?")) for s in sweep))
        for j, attack in enumerate(attacks):
            pts = sorted((s["eps"], 100 * s["acc"]) for s in sweep
                         if str(s.get("attack", "?")) == attack)
            ax.plot(*zip(*pts, strict=True), color=_color(i), ls=styles[j % 4],
                    marker=markers[j % 8], ms=5, label=f"{run.label} · {attack}")
            plotted = True
        if not sweep and run.eps is not None and run.robust is not None:
            name = run.pgd[1] if run.eval is None and run.pgd else "worst case"
            ax.plot([run.eps], [100 * run.robust], color=_color(i), marker="*", ms=12, ls="",
                    label=f"{run.label} · {name} at training ε (no sweep)")
            single.append(run.label)
            plotted = True
    if plotted:
        ax.set_ylim(-2, 102)
        ax.set_xlim(left=0)
        ax.legend(fontsize=8, loc="best")
    else:
        _empty(ax, "no run has an ε sweep or a robust accuracy")
    _finish(ax, "Robust accuracy vs attack budget ε", EPS_LABEL, "accuracy under attack (%)")
    _save(fig, path)
    return (f"Runs without an ε sweep in eval.json (shown as one star at their ε): "
            f"{', '.join(single)}." if single else "")


def plot_accuracy_vs_params(runs: Sequence[Run], path: Path) -> str:
    """Clean (hollow) and worst-case robust (filled) accuracy against parameters, log x, with
    the Pareto front of the robust points as a step line. Returns a note for report.md."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    pts = [(r.params, r.robust) for r in runs]
    shown = []
    for i, (run, (n, rob)) in enumerate(zip(runs, pts, strict=True)):
        if n is None or (run.clean is None and rob is None):
            continue
        shown.append(n)
        ys = [100 * v for v in (run.clean, rob) if v is not None]
        ax.plot([n] * len(ys), ys, color=_color(i), lw=1, alpha=0.6)
        if run.clean is not None:
            ax.plot(n, 100 * run.clean, "o", mfc="white", mec=_color(i), mew=2, ms=9)
        if rob is not None:
            ax.plot(n, 100 * rob, "^", color=_color(i), ms=10)
        ax.annotate(run.label, (n, 100 * (rob if rob is not None else run.clean)),
                    textcoords="offset points", xytext=(8, -12), color=_color(i), fontsize=9)
    front = pareto_front(pts)
    if front:
        xs = [pts[i][0] for i in front] + [max(shown)]
        ys = [100 * pts[i][1] for i in front]
        ax.step(xs, [*ys, ys[-1]], where="post", color="black", lw=1.5, ls="--", zorder=0)
    if shown:
        _log_axis(ax, "x", [min(shown), max(shown) * 3], minor_labels=False)  # label room
        ax.set_ylim(-2, 102)
        grey = "0.35"
        ax.legend(handles=[
            Line2D([], [], ls="", marker="o", mfc="white", mec=grey, mew=2, ms=9, label="clean"),
            Line2D([], [], ls="", marker="^", color=grey, ms=10,
                   label="robust (worst case: AutoAttack / PGD)"),
            Line2D([], [], color="black", ls="--", lw=1.5, label="Pareto front (robust)"),
        ], loc="best", fontsize=9)
    else:
        _empty(ax, "no run has a parameter count and an accuracy")
    _finish(ax, "Accuracy vs model size", "parameters (log scale)", "test accuracy (%)")
    ax.grid(True, which="minor", axis="x", alpha=0.15)
    _save(fig, path)
    return ""


def plot_training_curves(runs: Sequence[Run], path: Path) -> str:
    """Training loss (left) and validation clean / robust accuracy (right) per epoch."""
    fig = Figure(figsize=(12, 4.8))
    loss_ax, acc_ax = fig.subplots(1, 2)
    skipped = []
    for i, run in enumerate(runs):
        if not run.metrics:
            skipped.append(run.label)
            continue
        ep = [m["epoch"] for m in run.metrics]
        loss_ax.plot(ep, [m.get("train_loss", math.nan) for m in run.metrics], color=_color(i),
                     marker=".", label=run.label)
        for key, ls in (("val_clean_acc", "-"), ("val_robust_acc", "--")):
            acc_ax.plot(ep, [100 * m.get(key, math.nan) for m in run.metrics], color=_color(i),
                        ls=ls, marker=".")
    _finish(loss_ax, "Training loss (on the training adversary's inputs)", "epoch",
            "cross-entropy loss")
    _finish(acc_ax, "Validation accuracy (robust: PGD at the training ε)", "epoch",
            "validation accuracy (%)")
    if len(skipped) < len(runs):
        loss_ax.legend(fontsize=9, loc="best")
        acc_ax.legend(handles=[Line2D([], [], color="0.3", ls="-", label="clean"),
                               Line2D([], [], color="0.3", ls="--", label="robust (PGD)")],
                      fontsize=9, loc="best")
        for ax in (loss_ax, acc_ax):
            ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        _empty(acc_ax, "no run has a metrics.csv")
    _save(fig, path)
    return f"No metrics.csv (not plotted): {', '.join(skipped)}." if skipped else ""


def plot_kappa(runs: Sequence[Run], path: Path) -> str:
    """κ(W) of every separable layer per epoch (log y), one panel per run; runs without
    ``kappa/*`` columns in metrics.csv are skipped and named in the returned note."""
    have = [(i, r) for i, r in enumerate(runs) if r.kappa_columns]
    skipped = [r.label for r in runs if not r.kappa_columns]
    cols = max(1, min(3, len(have)))
    rows = max(1, math.ceil(len(have) / cols))
    fig = Figure(figsize=(max(8.0, 5.5 * cols), 4.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (_, run) in zip(axes, have, strict=False):
        ep = [m["epoch"] for m in run.metrics]
        layers = run.kappa_columns
        ys = {c: [m[c] if math.isfinite(m[c]) and m[c] > 0 else math.nan for m in run.metrics]
              for c in layers}
        if len(layers) <= MAX_KAPPA_LINES:
            for j, col in enumerate(layers):
                ax.plot(ep, ys[col], marker=".", label=col.removeprefix("kappa/"),
                        color=colormaps["viridis"](j / max(1, len(layers) - 1) * 0.9))
        else:  # too many lines to tell apart: the spread across layers and the worst one
            per_epoch = [[ys[c][e] for c in layers if not math.isnan(ys[c][e])]
                         for e in range(len(ep))]
            lo = [min(v, default=math.nan) for v in per_epoch]
            hi = [max(v, default=math.nan) for v in per_epoch]
            med = [sorted(v)[len(v) // 2] if v else math.nan for v in per_epoch]
            worst = max(layers, key=lambda c: -math.inf if math.isnan(ys[c][-1]) else ys[c][-1])
            ax.fill_between(ep, lo, hi, color="tab:blue", alpha=0.2,
                            label=f"min–max of {len(layers)} layers")
            ax.plot(ep, med, color="tab:blue", marker=".", label="median layer")
            ax.plot(ep, ys[worst], color="tab:red", marker=".",
                    label=f"worst: {worst.removeprefix('kappa/')}")
        _log_axis(ax, "y", [v for col in ys.values() for v in col], minor_labels=True)
        ax.xaxis.get_major_locator().set_params(integer=True)
        _finish(ax, run.label, "epoch", "κ(W) = σ_max/σ_min (log scale)")
        ax.grid(True, which="minor", axis="y", alpha=0.15)
        ax.legend(title="layer", fontsize=8, loc="best")
    for ax in axes[len(have):]:
        ax.set_axis_off()
    if not have:
        axes[0].set_axis_on()
        _empty(axes[0], "no run logged kappa/* columns (dense models have no factors)")
        _finish(axes[0], "", "epoch", "κ(W)")
    fig.suptitle("Condition number κ(W) = Π_k κ(U_k) of each separable layer")
    _save(fig, path)
    return (f"No kappa/* columns in metrics.csv (not plotted): {', '.join(skipped)}."
            if skipped else "")


# --------------------------------------------------------------------------- entry points


def default_out_dir(first_run: str | Path) -> Path:
    """``reports/`` beside the first run directory's parent: ``runs/a`` → ``reports``."""
    return Path(first_run).resolve().parent.parent / "reports"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Read the runs, write ``report.md`` and the four plots into ``out_dir``; return
    the path of ``report.md``. ``ValueError`` for no runs, a non-run directory or corrupt
    files (before anything is written)."""
    if not run_dirs:
        raise ValueError("no run directories given; pass one or more directories made by "
                         "`sstorch train` (e.g. sstorch report runs/a runs/b)")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, lab) for p, lab in zip(paths, _labels(paths), strict=True)]
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths[0])
    if out.exists() and not out.is_dir():
        raise FileSystemError(None, f"{out}: exists and is not a directory — give a directory "
                              "for --out (report.md and the plots go into it)", out)
    with fs_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    plotters = (plot_robust_vs_eps, plot_accuracy_vs_params, plot_training_curves, plot_kappa)
    notes = {name: fn(runs, out / name) for name, fn in zip(PLOTS, plotters, strict=True)}
    report = out / "report.md"
    atomic_write_text(report, render_markdown(runs, out, notes))
    return report


def main_report(argv: list[str]) -> int:
    """``sstorch report RUN_DIR [RUN_DIR ...] [--out DIR]``; prints where the report is."""
    p = argparse.ArgumentParser(
        prog="sstorch report",
        description="Compare runs: a markdown table (accuracy, AutoAttack, size, κ, sanity "
        "checks) and plots (robust accuracy vs ε and vs parameters, training curves, κ).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories made by `sstorch train` (and `sstorch eval`)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (default: reports/ beside the first run's parent)")
    args = p.parse_args(argv)
    report = write_report([expand_path(d, "RUN_DIR") for d in args.run_dirs],
                          None if args.out is None else expand_path(args.out, "--out"))
    print(f"report: {report} (+ {len(PLOTS)} plots in {report.parent}/)")
    return 0
