"""The four plots of ``sstorch report``: robust accuracy vs ε and vs parameters, training
curves, and κ of the separable layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogFormatter, NullFormatter

from sstorch.experiments.pareto import pareto_front
from sstorch.experiments.report.runs import EPS_LABEL, Run
from sstorch.io.fsutil import (
    atomic_write,
)

PLOTS = {  # file name → title in report.md
    "robust_vs_eps.png": "Robust accuracy vs ε",
    "accuracy_vs_params.png": "Accuracy vs parameters",
    "training_curves.png": "Training curves",
    "kappa.png": "Condition number κ of the separable layers",
}
DPI = 150
MAX_KAPPA_LINES = 10  # more layers than this: κ plot shows their spread, median and worst


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




