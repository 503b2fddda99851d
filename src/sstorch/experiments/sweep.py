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
The jobs run on an engine (:mod:`sstorch.experiments.engine`, scheduled by
:mod:`sstorch.experiments.schedule`): in this process by default, on a local pool of
``--workers`` spawned processes, or on a Ray cluster (``--ray ADDRESS``) when a sweep outgrows
one machine. A run directory another process holds (a second ``sstorch sweep`` of the same
directory, a ``sstorch train``) is never entered twice: the sweep waits for it.
"""

from __future__ import annotations

import argparse
import os
import sys

from sstorch.experiments.locks import held_by
from sstorch.experiments.manifest import Job, Manifest, jobs, load_manifest
from sstorch.experiments.records import load_record
from sstorch.experiments.schedule import run_sweep
from sstorch.experiments.stages import config_drift, evaluation_progress, handle_stale, run_job
from sstorch.experiments.tables import write_report
from sstorch.io.fsutil import expand_path

__all__ = ["Job", "Manifest", "load_manifest", "main_sweep", "run_job", "write_report"]


def _parser() -> argparse.ArgumentParser:
    """The argument parser of ``sstorch sweep``."""
    p = argparse.ArgumentParser(
        prog="sstorch sweep",
        description="Train and evaluate every (method, seed) of DIR/sweep.yaml, resuming "
        "whatever a previous call left unfinished, then rebuild the CSV, plots and table.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--workers", type=int, default=None,
                   help="jobs run at once: a local pool of worker processes (default: 1, "
                   "in this process); with --ray, the most tasks in flight (default: the "
                   "cluster's CPUs / threads)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: cores / workers; 1 with --ray)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the jobs on Ray: 'local' (start an instance here), 'auto' (the "
                   "running cluster) or ray://host:port; out_dir must be on a shared file "
                   "system (needs the 'ray' extra)")
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
    return p


def _list_jobs(m: Manifest) -> None:
    """Print every job with its state: stale, done, trained, recorded or pending (and who
    holds it while a process works on it)."""
    for j in jobs(m):
        state = ("stale" if config_drift(j) else "done" if j.evaluated
                 else "trained" if j.trained
                 else "recorded" if load_record(m, j) is not None else "pending")
        line = f"{j.method:<28} seed {j.seed}  {state:<8} {j.run_dir}"
        if state == "trained" and (prog := evaluation_progress(j.run_dir)) is not None:
            line += (f"  (evaluation under way: {prog[1]:,} test images in {prog[0]} "
                     f"journalled batch{'es' if prog[0] != 1 else ''})")
        if state in ("pending", "trained") and (who := held_by(j.run_dir)):
            line += f"  (running: held by {who})"
        print(line)


def _run(m: Manifest, args: argparse.Namespace, only: set[str] | None) -> int:
    """Run the sweep on the engine the arguments ask for; the number of jobs left undone."""
    from sstorch.experiments.engine import PoolEngine, RayEngine, SerialEngine

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be ≥ 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    run = dict(log=print, only=only, ignore_records=args.ignore_records)
    if args.ray is not None:
        engine = RayEngine(args.ray, args.threads or 1, args.workers)
        try:
            engine.check_shared(m.out_dir)
            return run_sweep(m, engine, threads=engine.threads, **run)
        finally:
            engine.close()
    workers = args.workers or 1
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        import torch

        torch.set_num_threads(threads)
        return run_sweep(m, SerialEngine(), **run)
    pool = PoolEngine(workers, threads)
    try:
        return run_sweep(m, pool, threads=threads, **run)
    finally:
        pool.close()


def main_sweep(argv: list[str]) -> int:
    """``sstorch sweep DIR [--workers N | --ray ADDRESS] [--threads T] [--report-only]
    [--list] [--only JOBS] [--move-stale]``."""
    args = _parser().parse_args(argv)
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
        _list_jobs(m)
        return 0
    if args.report_only:
        table = write_report(m)
        if table:
            print(table)
        return 0
    handle_stale(m, only, move=args.move_stale)
    left = _run(m, args, only)
    table = write_report(m)
    if table:
        print(table)
    if left:
        print(f"{left} job(s) failed or could not run (see sweep-error.txt in their run "
              "directories); call the command again to retry them", file=sys.stderr)
        return 1
    return 0

