"""The sweep's figures: robust accuracy against model size, and accuracy across radii ε."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sstorch.experiments.stats import fmean


def draw_figures(summary_rows: Sequence[dict[str, Any]], figures: Path,
                 log: Callable[[str], None] = print,
                 title: str = "L∞ attack radius of the runs") -> list[Path]:
    """``pareto_autoattack.png`` (AutoAttack accuracy against nonzeros, with the Pareto front,
    and every row ranked; ``title`` above both) and ``eps_sweep.png`` (PGD-20 accuracy against
    ε) in ``figures``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sstorch.experiments.pareto import pareto_front

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
    fig.suptitle(title, fontsize=9)
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
        accs = [fmean(s[i]["acc"] for s in sweeps) for i in range(len(eps))]
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
