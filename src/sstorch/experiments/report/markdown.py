"""The markdown table of ``sstorch report`` and the report it writes (:func:`write_report`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sstorch.experiments.pareto import pareto_front
from sstorch.experiments.report.plots import (
    PLOTS,
    plot_accuracy_vs_params,
    plot_kappa,
    plot_robust_vs_eps,
    plot_training_curves,
)
from sstorch.experiments.report.runs import DASH, Run, _labels, load_run_record
from sstorch.io.fsutil import (
    FileSystemError,
    atomic_write_text,
    fs_errors,
)


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


def render_report_markdown(runs: Sequence[Run], out_dir: Path, notes: dict[str, str] | None = None,
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
    runs = [load_run_record(p, lab) for p, lab in zip(paths, _labels(paths), strict=True)]
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths[0])
    if out.exists() and not out.is_dir():
        raise FileSystemError(None, f"{out}: exists and is not a directory — give a directory "
                              "for --out (report.md and the plots go into it)", out)
    with fs_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    plotters = (plot_robust_vs_eps, plot_accuracy_vs_params, plot_training_curves, plot_kappa)
    notes = {name: fn(runs, out / name) for name, fn in zip(PLOTS, plotters, strict=True)}
    report = out / "report.md"
    atomic_write_text(report, render_report_markdown(runs, out, notes))
    return report


