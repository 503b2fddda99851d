"""Seconds per adversarial-training epoch: dense vs separable MLP on Fashion-MNIST (PGD-10).

Trains one epoch of each model with the same recipe (configs/mlp-fashion-mnist-{dense,sep}.yaml),
interleaved, and prints the training-loop time (validation excluded) and the ratio.

    python benchmarks/epoch_time.py [--repeats 1] [--out-md docs/epoch_time.md]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import tempfile
from pathlib import Path

import torch

from sstorch.config import load_config
from sstorch.io.provenance import cpu_model
from sstorch.training.loop import train

ROOT = Path(__file__).resolve().parents[1]


def one_epoch(config: str, out: Path) -> tuple[float, int]:
    """(training-loop seconds of one epoch, parameter count) for a config."""
    cfg = load_config(ROOT / "configs" / config,
                      ["epochs=1", "data.val_size=0", "eval.n=500", f"out_dir={out}"])
    run = train(cfg, log=lambda *_: None)
    params = json.loads((run / "summary.json").read_text())["params"]
    with (run / "metrics.csv").open() as f:
        return float(next(csv.DictReader(f))["train_seconds"]), params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out-md", type=Path, default=None)
    args = p.parse_args()
    times: dict[str, list[float]] = {"dense": [], "sep": []}
    params: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in ("dense", "sep"):
                seconds, params[kind] = one_epoch(f"mlp-fashion-mnist-{kind}.yaml",
                                                  Path(tmp) / f"{r}")
                times[kind].append(seconds)
    dense, sep = min(times["dense"]), min(times["sep"])
    cpu = cpu_model() or platform.processor()
    lines = [
        f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{datetime.date.today()}; best of {args.repeats}.",
        "",
        "| model | parameters | s / epoch (PGD-10, 55k images) |",
        "| --- | --- | --- |",
        f"| dense MLP 784-1024-1024-10 | {params['dense']:,} | {dense:.1f} |",
        f"| separable MLP (28,28)→(32,32)→(32,32)→10 | {params['sep']:,} | {sep:.1f} |",
        "",
        f"Separable speed-up: **{dense / sep:.2f}×** "
        f"(command: `python benchmarks/epoch_time.py --repeats {args.repeats}`).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out_md:
        args.out_md.write_text("# Adversarial-training epoch time\n\n" + text + "\n")


if __name__ == "__main__":
    main()
