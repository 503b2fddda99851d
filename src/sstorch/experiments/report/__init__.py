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

from sstorch.experiments.pareto import pareto_front
from sstorch.experiments.report.markdown import render_report_markdown, write_report
from sstorch.experiments.report.plots import PLOTS
from sstorch.experiments.report.runs import Run, load_run_record
from sstorch.io.fsutil import expand_path

__all__ = ["Run", "load_run_record", "main_report", "pareto_front", "render_report_markdown",
           "write_report"]


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

