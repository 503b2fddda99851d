"""Search of config values with Optuna, selected on the validation split only (never the test set).

Trains one run per point (a set of config overrides) from a base config, in ``<out>/<point>``,
resuming or skipping finished points, and writes one CSV line per point with the epoch that the
run keeps as ``best.safetensors`` — the highest validation robust accuracy — and its validation
clean accuracy and ``log10 Π κ`` of the separable layers at that epoch (a run that prunes
keeps an epoch from ``prune.end_epoch`` on, as ``train`` does). The test-set numbers that
``sstorch train`` prints at the end are deliberately not read.

Two ways to choose the points:

* ``--grid KEY=V1,V2,...`` (repeat for a product grid): every point of the Cartesian product,
  in grid order (Optuna's ``GridSampler``; the points are queued in grid order so that
  ``--shard`` and the order stay what they were). Example (the constraint weights of the ~300x
  separable MLP, docs/results.md)::

    python benchmarks/tune.py configs/paper-fmnist/sep-mlp-200x.yaml \\
        --grid constraints.lambda_sparsity=0,1e-4,1e-3 \\
        --grid constraints.lambda_cond=0,1e-5,1e-4,1e-3 \\
        --out runs/tune/sep-mlp-200x --csv results/tuning/sep-mlp-200x.csv --select-within 1

* ``--space KEY=SPEC`` (repeat): a search of ``--trials N`` trials by ``--sampler tpe``
  (default) or ``random`` (``grid`` enumerates int and cat specs). SPEC is ``log:LO:HI`` (a
  float on a log scale), ``float:LO:HI``, ``int:LO:HI`` or ``cat:A|B|C`` (each value read as
  YAML, e.g. ``'model.hidden=cat:[[32,32],[32,32]]|[[32,32]]'``). Sampled floats are rounded
  to 4 significant digits, which names the point. A ``--grid`` given with ``--space`` is one
  more categorical parameter. The CSV gains the columns ``trial`` (the first trial that
  proposed the point) and ``nnz``. Points rejected untrained (over ``--max-nnz``, or an
  invalid config) do not count towards ``--trials`` (except with ``--sampler grid``, which
  runs out of points instead). Optuna sees pruned, diverged and rejected trials as pruned.

Keys are dotted config keys, as for ``--set``. The study lives in ``--storage`` (default
``sqlite:///<out>/study.db``) under ``--study-name`` (default: the name of ``--out``; a grid
gets its own study, named after the grid): rerunning the command continues it. ``--trials N``
is the study's total, so a rerun after an interruption finishes the search and a larger N
extends it; a finished point is never trained again (a point proposed twice reuses its run),
and an interrupted trial is proposed again first and resumes from its ``last.safetensors``.

``--pruner median`` (the default of a ``--space`` search; ``none`` for a grid) stops a trial
whose validation robust accuracy, reported after every epoch, is below the median of the
finished trials at the same epoch (from epoch 2 on, once 5 trials finished): its status is
``pruned at epoch E`` (``<out>/<point>/pruned.txt``; delete it to train the point on) and it is
never selected. ``--max-nnz N`` rejects, untrained and without a run directory, every point
whose model has more than N nonzero parameters, counted as ``sstorch`` counts them (the model
built from the config and pruned to ``prune.target`` / ``prune.keep``); a run whose trained
model ends over N is not selected either. ``--plot PATH.png`` draws the search: validation
robust accuracy per trial with the running best and, with nnz, accuracy against nnz.

``--shard I/N`` (grids only) runs every N-th point starting at I, so N processes can share a
grid (a ``--space`` search is shared by running the same command N times); the CSV is rebuilt
from whatever points are finished after each call. A point whose training diverges (NaN or
infinite loss) is a result too: its reason goes in ``<out>/<point>/diverged.txt`` and in the
CSV's ``status`` column, the search goes on, and the point is never selected; delete that file
to train the point again.

``--check-seeds 1,2`` asks the selected point to train at other seeds too (the search itself
runs at one seed): once every point is finished, the selected point is trained in full at each
check seed (``<out>/<point>.seed<S>``; only whether it trains is read, never its numbers). A
point that diverges at a check seed cannot be a row's recipe: its status becomes ``diverged
at seed S: ...``, it is never selected, and the next point is checked in turn. A rate at the
edge of stability can win at one seed and blow up at the next.

Optuna is an optional dependency (``pip install 'sstorch[bench]'``); rebuilding a grid's CSV
with ``--report-only`` does not need it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

COLUMNS = ["point", "best_epoch", "val_clean_acc", "val_robust_acc", "log10_kappa_sep",
           "train_seconds", "device", "selected", "status"]
DIVERGED = "diverged.txt"  # written in a point's run directory when its training diverged
PRUNED = "pruned.txt"  # written in a point's run directory when the pruner stopped it
KINDS = ("log", "float", "int", "cat")
SPEC_HELP = ("SPEC is log:LO:HI, float:LO:HI, int:LO:HI or cat:A|B|C "
             "(e.g. optim.lr=log:0.01:0.3, model.rank=int:1:8)")
PRUNE_WARMUP_EPOCHS = 2  # the median pruner judges a trial from this epoch on
PRUNE_STARTUP_TRIALS = 5  # ... once this many trials finished


def import_optuna():
    """The ``optuna`` module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise SystemExit("benchmarks/tune.py needs Optuna: pip install 'sstorch[bench]' "
                         "(or pip install 'optuna>=3.6')") from None
    return optuna


class Param(NamedTuple):
    """One searched config key: ``kind`` log, float, int or cat, with bounds or choices."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def suggest(self, trial) -> str:
        """The trial's value, as the text of a ``key=value`` override."""
        if self.kind == "cat":
            return str(trial.suggest_categorical(self.key, list(self.choices)))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high)))
        value = trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")
        return f"{value:.4g}"

    def grid_values(self) -> list[str] | list[int]:
        """Every value, for a grid sampler (int and cat only)."""
        if self.kind == "cat":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        raise SystemExit(f"--sampler grid enumerates int and cat specs; {self.key} is "
                         f"{self.kind}:{self.low:g}:{self.high:g} (use tpe or random)")

    def value(self, text: str) -> str | int | float:
        """``text`` as the value Optuna stores for this parameter (SystemExit if outside)."""
        try:
            if self.kind == "cat":
                if text not in self.choices:
                    raise ValueError(f"not one of {'|'.join(self.choices)}")
                return text
            v: int | float = int(text) if self.kind == "int" else float(text)
        except ValueError as exc:
            raise SystemExit(f"--enqueue {self.key}={text}: {exc}") from None
        if not self.low <= v <= self.high:
            raise SystemExit(f"--enqueue {self.key}={text}: outside {self.spec()}")
        return v

    def spec(self) -> str:
        """The ``--space`` text that gives this parameter."""
        if self.kind == "cat":
            return f"{self.key}=cat:{'|'.join(self.choices)}"
        return f"{self.key}={self.kind}:{self.low:g}:{self.high:g}"


def parse_enqueue(items: list[str], params: list[Param]) -> list[dict[str, str | int | float]]:
    """``["a=1;b=[[2,2]]"]`` → Optuna parameter dicts, one per item: designs to train first
    (e.g. the experiment's current row). Every searched key must be given, each inside its
    ``--space`` spec; ``;`` separates keys because values may hold commas."""
    by_key = {q.key: q for q in params}
    out = []
    for item in items:
        pairs = [t.partition("=") for t in item.split(";") if t.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise SystemExit(f"--enqueue {item!r}: expected KEY=VALUE;KEY=VALUE;...")
        given = {k.strip(): v.strip() for k, _, v in pairs}
        if unknown := set(given) - set(by_key):
            raise SystemExit(f"--enqueue {item!r}: {sorted(unknown)} not in --space")
        if missing := set(by_key) - set(given):
            raise SystemExit(f"--enqueue {item!r}: give every searched key; missing "
                             f"{sorted(missing)}")
        out.append({k: by_key[k].value(v) for k, v in given.items()})
    return out


def enqueue(study, designs: list[dict[str, str | int | float]]) -> int:
    """Queue each design the study has not tried or queued yet; returns how many were new."""
    seen = [t.params for t in study.get_trials(deepcopy=False)] + [
        t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)]
    new = [d for d in designs if d not in seen]
    for d in new:
        study.enqueue_trial(d)
    return len(new)


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


def parse_space(items: list[str]) -> list[Param]:
    """``["optim.lr=log:0.01:0.3", "model.hidden=cat:[[8,8]]|[[4,4]]"]`` → parameters."""
    params: list[Param] = []
    for item in items:
        key, sep, spec = item.partition("=")
        key = key.strip()
        kind, colon, rest = spec.strip().partition(":")
        if not sep or not key or not colon or kind not in KINDS:
            raise SystemExit(f"--space {item!r}: expected KEY=SPEC; {SPEC_HELP}")
        if key in {p.key for p in params}:
            raise SystemExit(f"--space names {key!r} twice; give its spec once")
        if kind == "cat":
            choices = [c.strip() for c in rest.split("|")]
            if not all(choices):
                raise SystemExit(f"--space {item!r}: an empty value in cat:A|B|C")
            if len(set(choices)) < len(choices):
                raise SystemExit(f"--space {item!r}: a value is given twice")
            for c in choices:
                try:
                    yaml.safe_load(c)
                except yaml.YAMLError as exc:
                    why = str(exc).splitlines()[0]
                    raise SystemExit(f"--space {item!r}: {c!r} is not YAML ({why})") from None
            params.append(Param(key, "cat", choices=tuple(choices)))
            continue
        bounds = rest.split(":")
        number = int if kind == "int" else float
        try:
            low, high = (number(b) for b in bounds)
        except ValueError:
            raise SystemExit(f"--space {item!r}: {kind} needs LO:HI, two "
                             f"{'integers' if kind == 'int' else 'numbers'}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise SystemExit(f"--space {item!r}: needs LO < HI (a fixed value goes in --set)")
        if kind == "log" and low <= 0:
            raise SystemExit(f"--space {item!r}: log needs 0 < LO")
        params.append(Param(key, kind, low, high))
    return params


def points(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination as a list of ``key=value`` overrides, in grid order."""
    keys = [k for k, _ in grid]
    return [[f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
            for combo in itertools.product(*(vals for _, vals in grid))]


def point_name(overrides: list[str]) -> str:
    """A directory-safe name: ``constraints.lambda_cond=1e-4`` → ``lambda_cond=1e-4``."""
    return ",".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1]
                    for o in overrides)


def read_metrics(metrics_csv: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (none if it does not exist)."""
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="") as f:
        return list(csv.DictReader(f))


def best_row(metrics_csv: Path, first_epoch: int = 1) -> dict[str, str]:
    """The ``metrics.csv`` row with the highest ``val_robust_acc`` (first on ties) among the
    epochs from ``first_epoch`` on (those ``train`` may keep as ``best.safetensors``)."""
    rows = read_metrics(metrics_csv)
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs")
    rows = [r for r in rows if int(r["epoch"]) >= first_epoch] or rows
    return max(rows, key=lambda r: float(r["val_robust_acc"]))


def first_kept_epoch(run_dir: Path) -> int:
    """The first epoch ``train`` may keep as best: ``prune.end_epoch`` for a pruned run."""
    path = run_dir / "config.yaml"
    saved = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    prune = saved.get("prune") or {}
    if float(prune.get("target") or 0) > 0 or prune.get("keep") is not None:
        return int(prune.get("end_epoch", 1))
    return 1


def _device(run_dir: Path) -> str:
    path = run_dir / "device.txt"
    return path.read_text().strip() if path.is_file() else "?"


def result(run_dir: Path, name: str) -> dict[str, object]:
    """One CSV line for a finished run (validation numbers only)."""
    row = best_row(run_dir / "metrics.csv", first_kept_epoch(run_dir))
    kappas = [float(v) for k, v in row.items() if k.startswith("kappa/") and v]
    seconds = sum(float(r["epoch_seconds"]) for r in read_metrics(run_dir / "metrics.csv"))
    out = {"point": name, "best_epoch": int(row["epoch"]),
           "val_clean_acc": float(row["val_clean_acc"]),
           "val_robust_acc": float(row["val_robust_acc"]),
           "log10_kappa_sep": round(sum(math.log10(k) for k in kappas), 3) if kappas else "",
           "train_seconds": round(seconds, 1), "device": _device(run_dir), "status": "ok"}
    if row.get("nnz"):
        out["nnz"] = int(float(row["nnz"]))  # the model kept as best.safetensors
    return out


def blank_result(run_dir: Path, name: str, status: str) -> dict[str, object]:
    """A CSV line without numbers: the point and its status."""
    return {"point": name, "best_epoch": "", "val_clean_acc": "", "val_robust_acc": "",
            "log10_kappa_sep": "", "train_seconds": "", "device": _device(run_dir),
            "status": status}


def diverged_result(run_dir: Path, name: str) -> dict[str, object]:
    """One CSV line for a point whose training diverged: no numbers, the reason as status."""
    reason = (run_dir / DIVERGED).read_text().strip().splitlines()[0].split(";")[0]
    return blank_result(run_dir, name, f"diverged: {reason}")


def pruned_result(run_dir: Path, name: str) -> dict[str, object]:
    """One CSV line for a trial the pruner stopped: its best epoch so far, and its status."""
    status = (run_dir / PRUNED).read_text().strip().splitlines()[0]
    rows = read_metrics(run_dir / "metrics.csv")
    if not any(int(r["epoch"]) >= first_kept_epoch(run_dir) for r in rows):
        return blank_result(run_dir, name, status)
    out = result(run_dir, name)
    out.pop("nnz", None)  # not the final model's count
    return {**out, "status": status}


def disk_result(run_dir: Path, name: str) -> dict[str, object] | None:
    """The line of a finished point (trained, diverged or pruned), or None if it is not."""
    if (run_dir / "summary.json").is_file():
        return result(run_dir, name)
    if (run_dir / DIVERGED).is_file():
        return diverged_result(run_dir, name)
    if (run_dir / PRUNED).is_file():
        return pruned_result(run_dir, name)
    return None


def over_budget(nnz: int, max_nnz: int) -> str:
    return f"over budget (nnz {nnz} > {max_nnz})"


def select(rows: list[dict[str, object]], within: float = 0.0) -> int | None:
    """Index of the selected point: the best validation robust accuracy, or with
    ``within > 0`` points, the best-conditioned point (smallest ``log10 Π κ``) among those
    whose validation robust accuracy is at most ``within`` points below the best — a
    "one standard error" rule: with 5,000 validation images, two accuracies ≈ 0.64 differ by
    about 1 point (one standard deviation of the difference) by chance alone. Points that
    diverged, were pruned or are over the budget (a status other than ``ok...``) are out.
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


def write_csv(path: Path, rows: list[dict[str, object]], columns: list[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore",
                           restval="")
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
        if not str(r["status"]).startswith("ok"):
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
              device: str, on_epoch: Callable[[int, dict], None] | None = None) -> bool:
    """Train one run; a divergence is recorded in ``run_dir/diverged.txt``. True if it trained.

    ``on_epoch`` goes to ``train`` (a trial reports and prunes through it); an exception it
    raises stops the run and propagates.
    """
    ok = True
    try:
        if on_epoch is None:
            train(cfg, resume=resume)
        else:
            train(cfg, resume=resume, on_epoch=on_epoch)
    except diverged_error as exc:  # a point of the search, not the end of the search
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / DIVERGED).write_text(f"{exc}\n")
        print(f"   {run_dir.name}: diverged ({exc})", flush=True)
        ok = False
    finally:
        if run_dir.is_dir():
            (run_dir / "device.txt").write_text(device + "\n")
    return ok


def count_nnz(cfg) -> int:
    """Nonzero parameters of the model ``cfg`` trains, as ``sstorch`` counts them at the end:
    the model built from the config, pruned to its final ``prune.target`` / ``prune.keep`` (the
    last step of the ramp ``train`` applies), counted by ``summary(model).total_nnz``."""
    import torch

    from sstorch.data import DATASET_INFO, canonical_name
    from sstorch.models import build_model
    from sstorch.structure.summary import summary
    from sstorch.training.loop import prune_to

    info = DATASET_INFO[canonical_name(cfg.data.name)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
        if cfg.prune.enabled:
            prune_to(model, cfg.prune, 1.0)
    return summary(model).total_nnz


def make_pruner(optuna, kind: str):
    """``median``: Optuna's median rule after a warm-up; ``none``: every trial trains in full."""
    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS,
                                       n_warmup_steps=PRUNE_WARMUP_EPOCHS)


def make_sampler(optuna, kind: str, params: list[Param], seed: int, constrained: bool):
    """The study's sampler. With a budget, TPE learns which points are over it (constraint
    ``nnz − max_nnz ≤ 0``, set on each trial)."""
    if kind == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid_values() for p in params}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    kwargs: dict[str, Any] = {}
    if constrained and not hasattr(optuna.trial.Trial, "set_constraint"):  # Optuna < 5
        kwargs["constraints_func"] = lambda t: (float(t.user_attrs.get("nnz_excess", 0.0)),)
    return optuna.samplers.TPESampler(seed=seed, **kwargs)


def storage_file(url: str) -> Path | None:
    """The database file of an SQLite URL (None for other databases)."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def open_storage(optuna, url: str):
    """An RDB storage with heartbeats, so a trial whose process died is seen as failed."""
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 3 to 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)


class StaleRun(Exception):
    """A point's run directory was trained with another config."""


class Search:
    """What a trial needs: the base config, where runs go, the budget and the trainer.

    ``count``: count nnz in every trial (a ``--space`` search, or a budget); ``label(number,
    point)``: how a trial is announced.
    """

    def __init__(self, config: str, sets: list[str], out: Path, params: list[Param],
                 max_nnz: int | None, count: bool, train: Callable, diverged_error: type,
                 device_of: Callable[[Any], str], label: Callable[[int, str], str]) -> None:
        self.config, self.sets, self.out, self.params = config, sets, out, params
        self.max_nnz, self.count, self.train = max_nnz, count, train
        self.diverged_error, self.device_of, self.label = diverged_error, device_of, label

    def cfg(self, overrides: list[str], name: str):
        from sstorch.config import load_config

        return load_config(self.config, [*self.sets, *overrides, f"out_dir={self.out}",
                                         f"name={name}"])

    def objective(self, trial) -> float:
        """Train the trial's point (or reuse its run); the best validation robust accuracy."""
        import optuna

        from sstorch.config import ConfigError, config_drift, drift_text

        overrides = [f"{p.key}={p.suggest(trial)}" for p in self.params]
        name = point_name(overrides)
        trial.set_user_attr("point", name)
        trial.set_user_attr("overrides", overrides)
        run_dir = self.out / name
        try:
            cfg = self.cfg(overrides, name)
            nnz = count_nnz(cfg) if self.count else None
        except (ConfigError, ValueError) as exc:
            status = f"invalid: {str(exc).splitlines()[0]}"
            trial.set_user_attr("status", status)
            print(f"== {self.label(trial.number, name)}: {status}", flush=True)
            raise optuna.TrialPruned(status) from None
        if nnz is not None:
            trial.set_user_attr("nnz", nnz)
        if self.max_nnz is not None:
            trial.set_user_attr("nnz_excess", nnz - self.max_nnz)
            if hasattr(trial, "set_constraint"):
                trial.set_constraint("nnz", nnz - self.max_nnz)
            if nnz > self.max_nnz:
                status = over_budget(nnz, self.max_nnz)
                trial.set_user_attr("status", status)
                print(f"== {self.label(trial.number, name)}: {status}", flush=True)
                raise optuna.TrialPruned(status)
        if (run_dir / "config.yaml").is_file() and (d := config_drift(run_dir / "config.yaml",
                                                                      cfg)):
            raise StaleRun(f"{run_dir}: {drift_text(d)}")
        done = disk_result(run_dir, name)
        if done is not None:  # a finished point: its curve and result, no training
            for r in read_metrics(run_dir / "metrics.csv"):
                trial.report(float(r["val_robust_acc"]), int(r["epoch"]))
            if done["status"] != "ok":
                raise optuna.TrialPruned(str(done["status"]))
            return float(done["val_robust_acc"])
        resume = run_dir if _started(run_dir) else None
        print(f"== {self.label(trial.number, name)}{' (resumed)' if resume else ''}", flush=True)
        t0 = time.perf_counter()
        try:
            ok = run_point(self.train, self.diverged_error, cfg, run_dir, resume,
                           self.device_of(cfg), reporter(trial, run_dir))
        except optuna.TrialPruned as exc:
            print(f"   {name}: {exc} ({time.perf_counter() - t0:.0f} s)", flush=True)
            raise
        if not ok:
            raise optuna.TrialPruned("diverged")
        value = float(result(run_dir, name)["val_robust_acc"])
        print(f"   {name}: {time.perf_counter() - t0:.0f} s, validation robust accuracy "
              f"{value:.4f}", flush=True)
        return value


def reporter(trial, run_dir: Path) -> Callable[[int, dict], None]:
    """``on_epoch`` for ``train``: report the epoch's validation robust accuracy to the trial
    (first the epochs trained before a resume) and stop the run when the pruner says so."""
    import optuna

    reported: set[int] = set()

    def on_epoch(epoch: int, row: dict) -> None:
        if not reported:
            for r in read_metrics(run_dir / "metrics.csv"):
                if int(r["epoch"]) < epoch:
                    trial.report(float(r["val_robust_acc"]), int(r["epoch"]))
                    reported.add(int(r["epoch"]))
        trial.report(float(row["val_robust_acc"]), epoch)
        reported.add(epoch)
        if trial.should_prune():
            (run_dir / PRUNED).write_text(f"pruned at epoch {epoch}\n")
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    return on_epoch


def requeue_interrupted(optuna, study) -> int:
    """Propose again the points of failed trials (interrupted, or their process died) that no
    later trial took up; their runs resume from ``last.safetensors``. Returns how many."""
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)  # RUNNING without a heartbeat for long → FAIL
    trials = study.get_trials(deepcopy=False)
    n = 0
    for t in trials:
        name = t.user_attrs.get("point")
        if t.state != TrialState.FAIL or name is None or "overrides" not in t.user_attrs:
            continue
        if any(u.number > t.number and u.user_attrs.get("point") == name for u in trials):
            continue
        study.enqueue_trial(dict(t.params), user_attrs={"point": name,
                                                        "overrides": t.user_attrs["overrides"]})
        n += 1
    return n


def search_rows(study, out: Path) -> tuple[list[dict[str, object]], dict[str, list[str]]]:
    """One line per finished point of the study (numbered by the first trial that proposed
    it), and ``{point: overrides}`` of every point the study named, finished or not."""
    rows: list[dict[str, object]] = []
    named: dict[str, list[str]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        name = t.user_attrs.get("point")
        if name is None or name in {r["point"] for r in rows}:
            continue
        named.setdefault(name, list(t.user_attrs.get("overrides", [])))
        row = disk_result(out / name, name)
        if row is None and "status" in t.user_attrs:  # over budget or invalid: never trained
            row = {**blank_result(out / name, name, t.user_attrs["status"]), "device": ""}
        if row is None:
            continue  # not finished (running, waiting or interrupted)
        row["trial"] = t.number
        row.setdefault("nnz", t.user_attrs.get("nnz", ""))
        rows.append(row)
    return rows, named


def enforce_budget(rows: list[dict[str, object]], max_nnz: int | None) -> None:
    """A trained model over the budget (counted after training) is not a candidate."""
    if max_nnz is None:
        return
    for r in rows:
        if str(r["status"]).startswith("ok") and r.get("nnz", "") != "" \
                and int(r["nnz"]) > max_nnz:
            r["status"] = over_budget(int(r["nnz"]), max_nnz)


def plot(rows: list[dict[str, object]], path: Path, max_nnz: int | None,
         by_trial: bool) -> None:
    """Validation robust accuracy per trial (by trial number, else in row order) with the
    running best, and against nnz when the rows have it. Points without a number (diverged,
    over budget, invalid) are ticks along the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def kind(r: dict[str, object]) -> str:
        status = str(r["status"])
        if r["val_robust_acc"] == "":
            return "over budget" if status.startswith("over budget") else "no result"
        return "ok" if status.startswith("ok") else "stopped"

    def draw(ax, xs: list[float]) -> None:
        styles = {"ok": ("o", "C0", "trained"),
                  "stopped": ("x", "0.45", "pruned / not selectable (best epoch so far)")}
        for k, (marker, color, label) in styles.items():
            pts = [(x, 100 * float(r["val_robust_acc"])) for x, r in zip(xs, rows, strict=True)
                   if x is not None and kind(r) == k]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker, color=color, ls="", label=label)
        for k, color in (("over budget", "C3"), ("no result", "0.3")):
            ticks = [x for x, r in zip(xs, rows, strict=True) if x is not None and kind(r) == k]
            if ticks:  # at the bottom edge: no accuracy to place them by
                ax.plot(ticks, [0.0] * len(ticks), "|", ms=12, color=color, ls="",
                        transform=ax.get_xaxis_transform(), clip_on=False,
                        label=f"{k} (untrained)" if k == "over budget"
                        else "diverged / invalid")
        for x, r in zip(xs, rows, strict=True):
            if x is not None and r.get("selected"):
                ax.plot([x], [100 * float(r["val_robust_acc"])], "*", ms=15, color="C3",
                        ls="", label="selected")
        ax.set_ylabel("validation robust accuracy (%)")

    with_nnz = any(r.get("nnz", "") != "" for r in rows)
    fig, axes = plt.subplots(1, 2 if with_nnz else 1, figsize=(11 if with_nnz else 6, 4),
                             squeeze=False)
    ax = axes[0][0]
    xs = [float(r["trial"]) if by_trial else float(i + 1) for i, r in enumerate(rows)]
    draw(ax, xs)
    best, steps = -math.inf, []
    for x, r in zip(xs, rows, strict=True):
        if kind(r) == "ok":
            best = max(best, 100 * float(r["val_robust_acc"]))
            steps.append((x, best))
    if steps:
        steps.append((max(xs), best))  # the best so far, up to the last trial
        ax.step(*zip(*steps, strict=True), where="post", color="C1", label="running best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial" if by_trial else "point (grid order)")
    ax.set_title(f"{len(rows)} points, {sum(kind(r) == 'ok' for r in rows)} selectable",
                 fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    if with_nnz:
        ax = axes[0][1]
        draw(ax, [float(r["nnz"]) if r.get("nnz", "") != "" else None for r in rows])
        if max_nnz is not None:
            ax.axvline(max_nnz, ls="--", color="C3", lw=1, label=f"budget {max_nnz:,} nnz")
        ax.set_xlabel("nonzero parameters")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_cfg(args: argparse.Namespace, overrides: list[str], seed: int):
    """The config of the check run of a point at ``seed``."""
    from sstorch.config import load_config

    out = Path(args.out)
    return load_config(args.config, [
        *args.set, *overrides, f"seed={seed}", f"out_dir={out}",
        f"name={check_dir(out, point_name(overrides), seed).name}"])


def refuse_stale(args: argparse.Namespace, named: dict[str, list[str]],
                 check_seeds: list[int]) -> None:
    """Stop if a point (or its check run) was trained with another config than the search
    gives (the base config or ``--set`` changed): that is another experiment, not to be
    resumed or put in the table."""
    from sstorch.config import config_drift, drift_text, load_config

    out = Path(args.out)
    runs = []
    for name, o in named.items():
        if (out / name / "config.yaml").is_file():
            runs.append((out / name, load_config(
                args.config, [*args.set, *o, f"out_dir={out}", f"name={name}"])))
        runs += [(check_dir(out, name, s), check_cfg(args, o, s)) for s in check_seeds
                 if (check_dir(out, name, s) / "config.yaml").is_file()]
    stale = [(run_dir, d) for run_dir, c in runs if (d := config_drift(run_dir / "config.yaml",
                                                                       c))]
    if stale:
        lines = "\n".join(f"  {run_dir}: {drift_text(d)}" for run_dir, d in stale)
        raise SystemExit(f"{len(stale)} point(s) under {out} were trained with another config "
                         f"than this search gives:\n{lines}\nuse a new --out, or move those "
                         "directories away to retrain them")


def open_study(optuna, args: argparse.Namespace, name: str, create: bool, sampler=None,
               pruner=None):
    """The study ``name`` in ``--storage``; None when ``create`` is false and it does not
    exist (nothing is written then)."""
    url = args.storage or f"sqlite:///{args.out}/study.db"
    db = storage_file(url)
    if not create:
        if db is not None and not db.is_file():
            return None
        try:
            return optuna.load_study(study_name=name, storage=open_storage(optuna, url),
                                     sampler=sampler, pruner=pruner)
        except KeyError:
            return None
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(storage=open_storage(optuna, url), study_name=name,
                               direction="maximize", sampler=sampler, pruner=pruner,
                               load_if_exists=True)


def optimize(study, search: Search, n_trials: int) -> None:
    """Run ``n_trials`` trials of ``search`` in ``study``; a stale run directory stops it."""
    if n_trials <= 0:
        return
    try:
        study.optimize(search.objective, n_trials=n_trials, gc_after_trial=False)
    except StaleRun as exc:
        raise SystemExit(f"a point was trained with another config than this search gives: "
                         f"{exc}; use a new --out, or move it away to retrain it") from None


def run_grid(args: argparse.Namespace, grid: list[tuple[str, list[str]]], search: Search,
             check_seeds: list[int], shard: int, nshards: int):
    """Every point of the grid in grid order (this shard's unfinished ones trained, through
    the study); returns (rows, {point: overrides}, points not finished)."""
    from sstorch.config import load_config

    out = Path(args.out)
    todo = points(grid)
    names = [point_name(o) for o in todo]
    named = dict(zip(names, todo, strict=True))
    cfgs = [load_config(args.config, [*args.set, *o, f"out_dir={out}", f"name={n}"])
            for n, o in named.items()]  # every point is a valid config
    refuse_stale(args, named, check_seeds)
    nnz = {n: count_nnz(c) for n, c in zip(names, cfgs, strict=True)} \
        if args.max_nnz is not None else {}
    rejected = {n for n in nnz if nnz[n] > args.max_nnz}
    mine = [n for i, n in enumerate(names) if i % nshards == shard and n not in rejected
            and disk_result(out / n, n) is None]
    if mine and not args.report_only:
        optuna = import_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        key = hashlib.sha1(json.dumps(grid).encode()).hexdigest()[:8]
        name = args.study_name or (f"{out.resolve().name}-grid-{key}"
                                   + (f"-shard{shard}of{nshards}" if nshards > 1 else ""))
        study = open_study(optuna, args, name, True,
                           make_sampler(optuna, "grid", search.params, args.seed, False),
                           make_pruner(optuna, args.pruner or "none"))
        waiting_states = (optuna.trial.TrialState.WAITING,)
        waiting = {t.user_attrs.get("point")
                   for t in study.get_trials(deepcopy=False, states=waiting_states)}
        for n in mine:  # queued in grid order; the objective trains whatever it is given
            if n not in waiting:
                study.enqueue_trial(dict(o.split("=", 1) for o in named[n]),
                                    user_attrs={"point": n, "overrides": named[n]})
        optimize(study, search, len(study.get_trials(deepcopy=False, states=waiting_states)))
    rows = []
    for n in names:
        row = disk_result(out / n, n)
        if row is None and n in rejected:
            row = {**blank_result(out / n, n, over_budget(nnz[n], args.max_nnz)), "device": ""}
        if row is not None:
            if nnz:
                row.setdefault("nnz", nnz[n])
            rows.append(row)
    return rows, named, len(todo) - len(rows)


def run_space(args: argparse.Namespace, search: Search, sampler_kind: str,
              check_seeds: list[int]):
    """Continue the study up to ``--trials`` finished trials; returns (rows, {point:
    overrides}, trials not finished)."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = args.study_name or Path(args.out).resolve().name
    signature = {"space": [q.spec() for q in search.params], "set": list(args.set),
                 "max_nnz": args.max_nnz}
    study = open_study(optuna, args, name, not args.report_only, optuna.samplers.RandomSampler(),
                       make_pruner(optuna, args.pruner or "median"))
    if study is None:
        return [], {}, args.trials
    old = study.user_attrs.get("tune")
    if old is None and not args.report_only:
        study.set_user_attr("tune", signature)
    elif old is not None and old != signature:
        raise SystemExit(f"study {name!r} is another search (--space {' '.join(old['space'])}; "
                         f"--set {' '.join(old['set']) or 'none'}; --max-nnz "
                         f"{old.get('max_nnz')}); use a new --out or --study-name for this one")
    _, named = search_rows(study, Path(args.out))
    refuse_stale(args, named, check_seeds)
    # rejected points (over budget, invalid) are not trained and do not count towards
    # --trials, except in an enumerated grid, which runs out of points instead
    rejected_count = sampler_kind == "grid"

    def n_done() -> int:
        return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                   and (rejected_count or "status" not in t.user_attrs)
                   for t in study.get_trials(deepcopy=False))

    if not args.report_only:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            requeue_interrupted(optuna, study)
        if n := enqueue(study, parse_enqueue(args.enqueue, search.params)):
            print(f"queued {n} design(s) from --enqueue", flush=True)
        # a resumed search draws new points: its seed moves on with the trials so far
        seed = args.seed if sampler_kind == "grid" else args.seed + len(study.trials)
        study.sampler = make_sampler(optuna, sampler_kind, search.params, seed,
                                     args.max_nnz is not None)
        first, cap = len(study.trials), 100 + 20 * args.trials
        while (need := args.trials - n_done()) > 0:
            if sampler_kind == "grid" and study.sampler.is_exhausted(study):
                break
            if len(study.trials) - first > cap:
                print(f"stopped after {len(study.trials) - first} trials in this call: most "
                      "points are over --max-nnz or invalid; narrow --space", file=sys.stderr)
                break
            optimize(study, search, need)
    rows, named = search_rows(study, Path(args.out))
    return rows, named, max(args.trials - n_done(), len(named) - len(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="base YAML config")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and its values (repeat for a product grid)")
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                   help=f"a config key to search (repeat); {SPEC_HELP}")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default=None,
                   help="tpe (the default with --space), random, or grid (enumerates int and "
                   "cat specs; the default with --grid alone)")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="a search's trials in total: a rerun continues the study up to N")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="the study's database, an SQLAlchemy URL (default "
                   "sqlite:///<out>/study.db)")
    p.add_argument("--study-name", default=None,
                   help="default: the name of --out (a grid: that and a hash of the grid)")
    p.add_argument("--pruner", choices=("median", "none"), default=None,
                   help="stop hopeless trials by the median rule (the default with --space; "
                   "a grid trains every point in full unless given)")
    p.add_argument("--max-nnz", type=int, default=None, metavar="N",
                   help="reject, untrained, points whose model has more than N nonzero "
                   "parameters (adds an nnz column)")
    p.add_argument("--enqueue", action="append", default=[], metavar="KEY=V;KEY=V",
                   help="a design to train first in a --space search (every searched key, "
                   "';'-separated), e.g. the experiment's current row; repeatable, queued once")
    p.add_argument("--plot", default=None, metavar="PATH.png",
                   help="plot the search: accuracy per trial and the running best, and "
                   "against nnz")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed override for every point (e.g. seed=0, init_from=DIR)")
    p.add_argument("--out", required=True, help="directory of the runs (one per point)")
    p.add_argument("--csv", required=True, help="the results CSV (rebuilt after each call)")
    p.add_argument("--select-within", type=float, default=0.0, metavar="POINTS",
                   help="select the best-conditioned point within POINTS of the best "
                   "validation robust accuracy (default 0: the best one)")
    p.add_argument("--check-seeds", default="", metavar="S1,S2",
                   help="train the selected point at these seeds too; one that diverges at "
                   "any of them is not selected and the next point is checked")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the CSV and table from the finished points")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="a grid: run points I, I+N, I+2N, ... (default: all)")
    args = p.parse_args(argv)
    grid = parse_grid(args.grid)
    space = parse_space(args.space)
    if not grid and not space:
        raise SystemExit("give at least one --grid KEY=V1,V2,... or --space KEY=SPEC")
    if both := {k for k, _ in grid} & {q.key for q in space}:
        raise SystemExit(f"{', '.join(sorted(both))}: given by both --grid and --space")
    if both := {s.partition("=")[0].strip() for s in args.set} & {q.key for q in space}:
        raise SystemExit(f"{', '.join(sorted(both))}: given by both --set and --space")
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
    if args.max_nnz is not None and args.max_nnz < 1:
        raise SystemExit(f"--max-nnz must be ≥ 1, got {args.max_nnz}")
    searching = bool(space) or args.sampler in ("tpe", "random")
    if args.enqueue and not space:
        raise SystemExit("--enqueue queues designs of a --space search; a grid trains every "
                         "point anyway")
    sampler_kind = args.sampler or ("tpe" if searching else "grid")
    params = [Param(k, "cat", choices=tuple(v)) for k, v in grid] + space
    if searching:
        if nshards > 1:
            raise SystemExit("--shard splits a grid; to share a search, run the same command "
                             "in several processes (one study in one --storage)")
        if args.trials is None:
            if sampler_kind != "grid":
                raise SystemExit(f"--sampler {sampler_kind} needs --trials N")
            args.trials = math.prod(len(q.grid_values()) for q in params)
        if args.trials < 1:
            raise SystemExit(f"--trials must be ≥ 1, got {args.trials}")
    elif args.trials is not None:
        raise SystemExit("--trials is for a search (--space, or --sampler tpe|random); a grid "
                         "trains every point")

    import torch

    from sstorch.training.loop import TrainingDiverged, train

    def device_of(cfg) -> str:
        return torch.cuda.get_device_name() if torch.cuda.is_available() \
            and cfg.device != "cpu" else "CPU"

    out = Path(args.out)
    search = Search(args.config, args.set, out, params, args.max_nnz,
                    searching or args.max_nnz is not None, train, TrainingDiverged, device_of,
                    (lambda n, name: f"trial {n}: {name}") if searching
                    else (lambda n, name: name))
    if searching:
        rows, named, missing = run_space(args, search, sampler_kind, check_seeds)
        columns, unit, expected = ["trial", *COLUMNS, "nnz"], "trials", args.trials
    else:
        rows, named, missing = run_grid(args, grid, search, check_seeds, shard, nshards)
        columns = [*COLUMNS, "nnz"] if args.max_nnz is not None else COLUMNS
        unit, expected = "points", len(named)
    enforce_budget(rows, args.max_nnz)
    while True:
        pending = {str(r["point"]): apply_checks(r, out, check_seeds) for r in rows}
        chosen = select(rows, args.select_within)
        if chosen is None or args.report_only or missing \
                or not pending[str(rows[chosen]["point"])]:
            break
        name = str(rows[chosen]["point"])
        for s in pending[name]:  # train the selected point at each check seed
            run_dir = check_dir(out, name, s)
            resume = run_dir if _started(run_dir) else None
            print(f"== {name} at check seed {s}{' (resumed)' if resume else ''}", flush=True)
            cfg = check_cfg(args, named[name], s)
            if not run_point(train, TrainingDiverged, cfg, run_dir, resume, device_of(cfg)):
                break  # diverged: no need to try the other seeds
    for i, r in enumerate(rows):
        r["selected"] = i == chosen
    write_csv(Path(args.csv), rows, columns)
    print(table(rows))
    if args.plot:
        plot(rows, Path(args.plot), args.max_nnz, searching)
    if missing:
        print(f"{missing} of {expected} {unit} not finished yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
