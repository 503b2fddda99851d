"""Robust accuracy against what a deployment pays: nonzero parameters, bytes on disk, latency.

For every evaluated row of a sweep (``configs/<sweep>/sweep.yaml`` and its results CSV) this
puts the row's mean AutoAttack accuracy next to three costs of its model, measured side by side
in one run:

* **nnz**: nonzero parameters, as ``sstorch.structure.summary`` counts them (the sweep CSV's mean);
* **bytes on disk**: the file a device would store — the model's weights packed by
  ``sstorch.export.sparse.pack_sparse`` (a pruned tensor as a bitmask plus its nonzero values, every
  other tensor dense float32; buffers included), i.e. the real serialized size with the
  indices that pruning needs;
* **latency**: onnxruntime CPU batch-1 latency of the exported ONNX graph (median and p95 over
  ``--rounds`` round-robin rounds of ``--per-round`` calls per model, ``--threads`` intra-op
  threads). onnxruntime runs a pruned layer as a dense matrix with zeros: unstructured sparsity
  saves no time there, and the table says so by measuring it rather than assuming it.

Size and latency do not depend on trained values, so each model is built from its row's config
and given the row's structure: a pruned dense MLP keeps the row's mean number of weights
(``sstorch.pruning.magnitude.prune_linear_`` on random weights: the same bitmask and value counts as
the trained pattern), separable factors their ``prune.target``. Accuracy comes from the sweep's
results only (the test set is never read here).

    python benchmarks/pareto.py configs/paper-fmnist \\
        [--methods sep-mlp-200x,prune-mlp-200x,...] [--threads 1] \\
        [--csv results/fashion_mnist_deploy.csv] \\
        [--figure docs/figures/paper-fmnist/pareto_deploy.png]

The Pareto front of each panel is drawn per family: separable rows against all others (pruning,
HYDRA, narrow dense, low-rank, Tucker, TT, dense).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sstorch.config import load_config
from sstorch.data import DATASET_INFO, canonical_name
from sstorch.experiments.sweep import load_manifest
from sstorch.export.onnx import export_onnx, onnx_session
from sstorch.export.sparse import pack_sparse
from sstorch.io.fsutil import atomic_write
from sstorch.layers.separable import SeparableLinear
from sstorch.models import build_model
from sstorch.pruning.factor import prune_factors
from sstorch.pruning.magnitude import linear_layers, prune_linear_
from sstorch.structure.summary import summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import time_sessions

COLUMNS = ["method", "family", "seeds", "autoattack_acc", "nnz", "params", "bytes_packed",
           "bytes_fp32", "onnx_bytes", "b1_ms_median", "b1_ms_p95"]


@dataclass
class Point:
    method: str
    family: str  # "separable" or "other"
    seeds: int
    autoattack_acc: float  # mean over seeds
    nnz: int  # mean over seeds, rounded
    params: int
    bytes_packed: int = 0
    bytes_fp32: int = 0
    onnx_bytes: int = 0
    b1_ms_median: float = math.nan
    b1_ms_p95: float = math.nan


def sweep_means(csv_path: Path) -> dict[str, tuple[float, float, int, int]]:
    """``{method: (mean AutoAttack, mean nnz, params, seeds)}`` from a sweep's results CSV."""
    by: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            by[row["method"]].append(row)
    return {m: (statistics.fmean(float(r["autoattack_acc"]) for r in rows),
                statistics.fmean(float(r["nnz"]) for r in rows), int(rows[0]["params"]),
                len(rows))
            for m, rows in by.items()}


def structured_model(config: Path, nnz: int, seed: int = 0) -> torch.nn.Module:
    """The row's model with random weights and the row's sparsity structure (see module)."""
    cfg = load_config(config)
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    torch.manual_seed(seed)
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    if cfg.prune.enabled:
        if any(isinstance(m, SeparableLinear) for m in model.modules()):
            prune_factors(model, cfg.prune.target)
        else:  # every nonzero that is not a Linear weight stays; the weights make up the rest
            weights = sum(layer.weight.numel() for _, layer in linear_layers(model))
            prune_linear_(model, keep=max(1, nnz - (summary(model).total_nnz - weights)))
    return model.eval()


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal x and higher or equal y,
    one strictly), sorted by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
    front, best = [], -math.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front


def plot(points: list[Point], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("nnz", "nonzero parameters"), ("bytes_packed", "bytes on disk (packed)"),
              ("b1_ms_median", "onnxruntime CPU batch-1 latency (ms, median)")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colors = {"separable": "tab:blue", "other": "tab:orange"}
    for ax, (key, label) in zip(axes, panels, strict=True):
        for family in ("separable", "other"):
            fam = [p for p in points if p.family == family]
            xs = [float(getattr(p, key)) for p in fam]
            ys = [100 * p.autoattack_acc for p in fam]
            ax.scatter(xs, ys, color=colors[family], label=family, zorder=3)
            for p, x, y in zip(fam, xs, ys, strict=True):
                ax.annotate(p.method, (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            if fam:
                front = pareto_front(xs, ys)
                ax.step([xs[i] for i in front], [ys[i] for i in front], where="post",
                        color=colors[family], alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("AutoAttack accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="Pareto front per family")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_csv(path: Path, points: list[Point]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
            w.writeheader()
            for p in points:
                w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v)
                            for k, v in asdict(p).items()})

    atomic_write(path, write)


def measure(points: list[Point], configs: Path, args: argparse.Namespace) -> None:
    """Fill in bytes and latency of every point (export, pack, then time round-robin)."""
    torch.set_num_threads(args.threads)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in points:
            model = structured_model(configs / f"{p.method}.yaml", p.nnz)
            shape = model.image_shape
            images = torch.rand(8, *shape, generator=torch.Generator().manual_seed(0))
            onnx_path = Path(tmp) / f"{p.method}.onnx"
            report = export_onnx(model, onnx_path, images=images, n_parity=8)
            packed = pack_sparse(model, Path(tmp) / f"{p.method}.sparse.safetensors")
            p.onnx_bytes, p.bytes_packed = report.bytes, packed.file_bytes
            p.bytes_fp32 = report.bytes_dense_fp32
            sessions[p.method] = onnx_session(onnx_path, threads=args.threads)
            print(f"{p.method}: nnz {p.nnz:,}, packed {p.bytes_packed:,} B, onnx "
                  f"{p.onnx_bytes:,} B", file=sys.stderr)
        x = images[:1].numpy()
        times = time_sessions(sessions, x, args.rounds, args.per_round, args.warmup)
    for p in points:
        p.b1_ms_median = statistics.median(times[p.method]) * 1e3
        p.b1_ms_p95 = float(np.percentile(times[p.method], 95)) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path, help="a sweep directory (its sweep.yaml names the CSV)")
    ap.add_argument("--methods", default=None, help="comma-separated rows (default: all "
                    "evaluated rows of the results CSV)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args(argv)
    m = load_manifest(args.sweep)
    if not m.csv.is_file():
        ap.error(f"{m.csv} not found: run or rebuild the sweep first (sstorch sweep "
                 f"{args.sweep} --report-only)")
    means = sweep_means(m.csv)
    wanted = ([s.strip() for s in args.methods.split(",") if s.strip()] if args.methods
              else [r.method for r in m.rows if r.method in means])
    if missing := [w for w in wanted if w not in means]:
        ap.error(f"no evaluated rows for {missing} in {m.csv}")
    points = []
    for method in wanted:
        acc, nnz, params, seeds = means[method]
        cfg = load_config(m.root / f"{method}.yaml")
        family = "separable" if cfg.model.separable else "other"
        points.append(Point(method, family, seeds, acc, round(nnz), params))
    measure(points, m.root, args)
    print(f"{'method':<24} {'AA %':>6} {'nnz':>10} {'packed B':>11} {'b1 ms':>7}")
    for p in points:
        print(f"{p.method:<24} {100 * p.autoattack_acc:>6.2f} {p.nnz:>10,} "
              f"{p.bytes_packed:>11,} {p.b1_ms_median:>7.3f}")
    if args.csv:
        write_csv(args.csv, points)
    if args.figure:
        plot(points, args.figure, f"{args.sweep.name}: AutoAttack accuracy vs deployment cost")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
