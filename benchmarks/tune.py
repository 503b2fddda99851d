"""Grid search of config values, selected on the validation split only (never the test set).

Trains one run per point of the grid (the Cartesian product of every ``--grid KEY=V1,V2,...``)
from a base config, resuming or skipping finished points, and writes one CSV line per point with
the epoch that the run keeps as ``best.safetensors`` — the highest validation robust accuracy —
and its validation clean accuracy and ``log10 Π κ`` of the separable layers at that epoch. The
test-set numbers that ``sstorch train`` prints at the end are deliberately not read.

Example (the constraint weights of the ~300x separable MLP, docs/results.md)::

    python benchmarks/tune.py configs/paper-fmnist/sep-mlp-200x.yaml \\
        --grid constraints.lambda_cond=0,1e-5,1e-4,1e-3 \\
        --grid constraints.lambda_sparsity=1e-5,1e-4 \\
        --out runs/tune/sep-mlp-200x --csv results/tuning/sep-mlp-200x.csv

``--shard I/N`` runs every N-th point starting at I, so N processes can share a grid; the CSV
is rebuilt from whatever points are finished after each one. A point whose training diverges
(NaN or infinite loss) is a result too: its reason goes in ``<out>/<point>/diverged.txt`` and
in the CSV's ``status`` column, the grid goes on, and the point is never selected; delete that
file to train the point again.

``--check-seeds 1,2`` asks the selected point to train at other seeds too (the grid itself runs
at one seed): once every point is finished, the selected point is trained in full at each
check seed (``<out>/<point>.seed<S>``; only whether it trains is read, never its numbers). A
point that diverges at a check seed cannot be a row's recipe: its status becomes ``diverged
at seed S: ...``, it is never selected, and the next point is checked in turn. A rate at the
edge of stability can win at one seed and blow up at the next.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys
import time
from pathlib import Path

COLUMNS = ["point", "best_epoch", "val_clean_acc", "val_robust_acc", "log10_kappa_sep",
           "train_seconds", "device", "selected", "status"]
DIVERGED = "diverged.txt"  # written in a point's run directory when its training diverged


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["a.b=1,2", "c=x"]`` → ``[("a.b", ["1", "2"]), ("c", ["x"])]`` (keys unique)."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise SystemExit(f"--grid {item!r}: expected KEY=V1,V2,... "
                             "(e.g. constraints.lambda_cond=0,1e-4)")
        if key.strip() in {k for k, _ in grid}:
            raise SystemExit(f"--grid names {key.strip()!r} twice; give its values once")
        grid.append((key.strip(), vals))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination as a list of ``key=value`` overrides, in grid order."""
    keys = [k for k, _ in grid]
    return [[f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
            for combo in itertools.product(*(vals for _, vals in grid))]


def point_name(overrides: list[str]) -> str:
    """A directory-safe name: ``constraints.lambda_cond=1e-4`` → ``lambda_cond=1e-4``."""
    return ",".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1]
                    for o in overrides)


def best_row(metrics_csv: Path) -> dict[str, str]:
    """The ``metrics.csv`` row with the highest ``val_robust_acc`` (first on ties)."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs")
    return max(rows, key=lambda r: float(r["val_robust_acc"]))


def result(run_dir: Path, name: str) -> dict[str, object]:
    """One CSV line for a finished run (validation numbers only)."""
    row = best_row(run_dir / "metrics.csv")
    kappas = [float(v) for k, v in row.items() if k.startswith("kappa/") and v]
    with open(run_dir / "metrics.csv", newline="") as f:
        seconds = sum(float(r["epoch_seconds"]) for r in csv.DictReader(f))
    device = (run_dir / "device.txt").read_text().strip() if (run_dir / "device.txt").is_file() \
        else "?"
    return {"point": name, "best_epoch": int(row["epoch"]),
            "val_clean_acc": float(row["val_clean_acc"]),
            "val_robust_acc": float(row["val_robust_acc"]),
            "log10_kappa_sep": round(sum(math.log10(k) for k in kappas), 3) if kappas else "",
            "train_seconds": round(seconds, 1), "device": device, "status": "ok"}


def diverged_result(run_dir: Path, name: str) -> dict[str, object]:
    """One CSV line for a point whose training diverged: no numbers, the reason as status."""
    reason = (run_dir / DIVERGED).read_text().strip().splitlines()[0].split(";")[0]
    device = (run_dir / "device.txt").read_text().strip() if (run_dir / "device.txt").is_file() \
        else "?"
    return {"point": name, "best_epoch": "", "val_clean_acc": "", "val_robust_acc": "",
            "log10_kappa_sep": "", "train_seconds": "", "device": device,
            "status": f"diverged: {reason}"}


def select(rows: list[dict[str, object]], within: float = 0.0) -> int | None:
    """Index of the selected point: the best validation robust accuracy, or with
    ``within > 0`` points, the best-conditioned point (smallest ``log10 Π κ``) among those
    whose validation robust accuracy is at most ``within`` points below the best — a
    "one standard error" rule: with 5,000 validation images, two accuracies ≈ 0.64 differ by
    about 1 point (one standard deviation of the difference) by chance alone.
    """
    done = [i for i, r in enumerate(rows)  # not diverged, at its seed or a check seed
            if r["val_robust_acc"] != "" and str(r.get("status", "ok")).startswith("ok")]
    if not done:
        return None
    best = max(float(rows[i]["val_robust_acc"]) for i in done)
    if within <= 0:
        return next(i for i in done if float(rows[i]["val_robust_acc"]) == best)
    close = [i for i in done if float(rows[i]["val_robust_acc"]) >= best - within / 100 - 1e-12]
    kappa = lambda i: float(rows[i]["log10_kappa_sep"]) if rows[i]["log10_kappa_sep"] != "" \
        else math.inf  # noqa: E731
    return min(close, key=lambda i: (kappa(i), -float(rows[i]["val_robust_acc"])))


def check_dir(out: Path, name: str, seed: int) -> Path:
    """Where the check run of point ``name`` at ``seed`` trains."""
    return out / f"{name}.seed{seed}"


def apply_checks(row: dict[str, object], out: Path, seeds: list[int]) -> list[int]:
    """Fold the finished check runs of ``row`` into its status; return the seeds not run yet.

    A check run that diverged makes the status ``diverged at seed S: <reason>``; when every
    check seed trained, ``ok (trains at seeds 1, 2 too)``.
    """
    if not seeds or not str(row["status"]).startswith("ok"):
        return []
    pending = []
    for s in seeds:
        d = check_dir(out, str(row["point"]), s)
        if (d / DIVERGED).is_file():
            reason = (d / DIVERGED).read_text().strip().splitlines()[0].split(";")[0]
            row["status"] = f"diverged at seed {s}: {reason}"
            return []
        if not (d / "summary.json").is_file():
            pending.append(s)
    if not pending:
        row["status"] = f"ok (trains at seed{'s' if len(seeds) > 1 else ''} " \
            f"{', '.join(map(str, seeds))} too)"
    return pending


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def table(rows: list[dict[str, object]]) -> str:
    """Markdown table, the selected point marked."""
    lines = ["| point | best epoch | val clean % | val robust % | log10 Π κ(sep) | train s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["val_robust_acc"] == "":
            lines.append(f"| {r['point']} | {r['status']} | | | | |")
            continue
        mark = " **(selected)**" if r["selected"] else ""
        if str(r["status"]).startswith("diverged"):
            mark = f" ({r['status']})"
        lines.append(f"| {r['point']}{mark} | {r['best_epoch']} "
                     f"| {100 * float(r['val_clean_acc']):.2f} "
                     f"| {100 * float(r['val_robust_acc']):.2f} | {r['log10_kappa_sep']} "
                     f"| {r['train_seconds']} |")
    return "\n".join(lines) + "\n"


def _started(run_dir: Path) -> bool:
    """Whether training began in ``run_dir``: resume it (from epoch 1 if it was stopped before
    its first checkpoint; `sstorch train` refuses a fresh run there)."""
    return any((run_dir / f).is_file() for f in ("last.safetensors", "config.yaml"))


def run_point(train, diverged_error, cfg, run_dir: Path, resume: Path | None,
              device: str) -> bool:
    """Train one run; a divergence is recorded in ``run_dir/diverged.txt``. True if it trained."""
    ok = True
    try:
        train(cfg, resume=resume)
    except diverged_error as exc:  # a point of the grid, not the end of the grid
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / DIVERGED).write_text(f"{exc}\n")
        print(f"   {run_dir.name}: diverged ({exc})", flush=True)
        ok = False
    (run_dir / "device.txt").write_text(device + "\n")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="base YAML config")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values (repeat for a product grid)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed override for every point (e.g. seed=0, init_from=DIR)")
    p.add_argument("--out", required=True, help="directory of the runs (one per point)")
    p.add_argument("--csv", required=True, help="the results CSV (rebuilt after each point)")
    p.add_argument("--select-within", type=float, default=0.0, metavar="POINTS",
                   help="select the best-conditioned point within POINTS of the best "
                   "validation robust accuracy (default 0: the best one)")
    p.add_argument("--check-seeds", default="", metavar="S1,S2",
                   help="train the selected point at these seeds too; one that diverges at "
                   "any of them is not selected and the next point is checked")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the CSV and table from the finished points")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run points I, I+N, I+2N, ... (default: all)")
    args = p.parse_args(argv)
    grid = parse_grid(args.grid)
    if not grid:
        raise SystemExit("give at least one --grid KEY=V1,V2,...")
    try:
        shard, nshards = (int(x) for x in args.shard.split("/"))
        assert 0 <= shard < nshards
    except (ValueError, AssertionError):
        raise SystemExit(f"--shard {args.shard!r}: expected I/N with 0 ≤ I < N") from None
    try:
        check_seeds = [int(x) for x in args.check_seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--check-seeds {args.check_seeds!r}: expected integers such as 1,2") \
            from None

    import torch

    from sstorch.config import config_drift, drift_text, load_config
    from sstorch.train import TrainingDiverged, train

    out = Path(args.out)
    todo = points(grid)
    cfgs = [load_config(args.config, [*args.set, *o, f"out_dir={out}", f"name={point_name(o)}"])
            for o in todo]
    # a point trained with another config (the base config or --set changed) is another
    # experiment: refuse to resume it or to put it in the table
    def check_cfg(o: list[str], seed: int):
        return load_config(args.config, [*args.set, *o, f"seed={seed}", f"out_dir={out}",
                                         f"name={check_dir(out, point_name(o), seed).name}"])

    runs = [(point_name(o), out / point_name(o), c) for o, c in zip(todo, cfgs, strict=True)]
    runs += [(check_dir(out, point_name(o), s).name, check_dir(out, point_name(o), s),
              check_cfg(o, s)) for o in todo for s in check_seeds
             if (check_dir(out, point_name(o), s) / "config.yaml").is_file()]
    stale = [(n, d) for n, run_dir, c in runs if (run_dir / "config.yaml").is_file()
             and (d := config_drift(run_dir / "config.yaml", c))]
    if stale:
        lines = "\n".join(f"  {out / n}: {drift_text(d)}" for n, d in stale)
        raise SystemExit(f"{len(stale)} point(s) under {out} were trained with another config "
                         f"than this grid gives:\n{lines}\nuse a new --out, or move those "
                         "directories away to retrain them")
    for i, (overrides, cfg) in enumerate(zip(todo, cfgs, strict=True)):
        name = point_name(overrides)
        run_dir = out / name
        if args.report_only or i % nshards != shard or (run_dir / "summary.json").is_file() \
                or (run_dir / DIVERGED).is_file():
            continue
        resume = run_dir if _started(run_dir) else None
        print(f"== {name}{' (resumed)' if resume else ''}", flush=True)
        t0 = time.perf_counter()
        dev = torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.device != "cpu" \
            else "CPU"
        run_point(train, TrainingDiverged, cfg, run_dir, resume, dev)
        print(f"   {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [result(out / point_name(o), point_name(o))
            if (out / point_name(o) / "summary.json").is_file()
            else diverged_result(out / point_name(o), point_name(o)) for o in todo
            if (out / point_name(o) / "summary.json").is_file()
            or (out / point_name(o) / DIVERGED).is_file()]
    by_name = {point_name(o): o for o in todo}
    while True:
        pending = {str(r["point"]): apply_checks(r, out, check_seeds) for r in rows}
        chosen = select(rows, args.select_within)
        if chosen is None or args.report_only or len(rows) < len(todo) \
                or not pending[str(rows[chosen]["point"])]:
            break
        name = str(rows[chosen]["point"])
        for s in pending[name]:  # train the selected point at each check seed
            run_dir = check_dir(out, name, s)
            resume = run_dir if _started(run_dir) else None
            print(f"== {name} at check seed {s}{' (resumed)' if resume else ''}", flush=True)
            cfg = check_cfg(by_name[name], s)
            dev = torch.cuda.get_device_name() if torch.cuda.is_available() \
                and cfg.device != "cpu" else "CPU"
            if not run_point(train, TrainingDiverged, cfg, run_dir, resume, dev):
                break  # diverged: no need to try the other seeds
    for i, r in enumerate(rows):
        r["selected"] = i == chosen
    write_csv(Path(args.csv), rows)
    print(table(rows))
    missing = len(todo) - len(rows)
    if missing:
        print(f"{missing} of {len(todo)} points not finished yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
