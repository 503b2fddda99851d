"""What one attack step costs for each model of the paper sweep (configs/paper-fmnist/).

An attack step is a forward and a backward pass w.r.t. the input images (PGD, APGD, FAB) on a
batch of images, with the model frozen as `sstorch eval` freezes it. This is what the sweep's
evaluation seconds are made of. Three kinds of model are timed twice, without and with the
cost-only change evaluation makes: pruned models (dense kernels on the masked weights; the CSR
weights of `sstorch.pruning.sparse.sparse_inference`), the Tucker baseline (tensorly-torch's
forward
that rebuilds W at every call; sstorch's factor-by-factor contraction) and the VGG-16 models
(convolution kernels in the standard layout; the channels-last layout of
`sstorch.eval.common.channels_last_inference`). Weights are freshly initialised (timing does not
depend on them; the pruned model keeps the configured number of weights by global magnitude).
Round-robin timing, so load changes hit every model alike; ratios are to `dense-mlp` in the same
run.

    python benchmarks/eval_cost.py [--batch 500] [--repeats 20] [--threads 1] \
        [--out-md docs/eval_cost.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from sstorch.config import load_config
from sstorch.data import DATASET_INFO, canonical_name
from sstorch.eval.common import frozen
from sstorch.experiments.timing import cpu_seconds, machine_info, time_interleaved
from sstorch.layers.tensorized import TensorizedLinear
from sstorch.models import build_model
from sstorch.pruning.magnitude import prune_linear_
from sstorch.structure.summary import summary

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper-fmnist"
ROWS = ["dense-mlp", "narrow-mlp-10x", "sep-mlp-10x", "prune-mlp-200x", "tucker-mlp-200x",
        "tt-mlp-200x", "lowrank-mlp-200x", "narrow-mlp-200x", "sep-mlp-200x", "vgg16-dense",
        "vgg16-sep"]


def build(row: str) -> nn.Module:
    cfg = load_config(PAPER / f"{row}.yaml")
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    if cfg.prune.enabled and cfg.prune.keep:
        prune_linear_(model, keep=cfg.prune.keep, scope="global")
    return model


@contextlib.contextmanager
def dense_kernels(model: nn.Module) -> Iterator[None]:
    """Frozen like evaluation, but pruned layers keep nn.Linear's dense forward."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


@contextlib.contextmanager
def tltorch_rebuild(model: nn.Module) -> Iterator[None]:
    """Tucker layers through tensorly-torch's own forward (W rebuilt at every call)."""
    layers = [m for m in model.modules() if isinstance(m, TensorizedLinear)]
    for m in layers:
        m.forward = types.MethodType(lambda self, x: self.layer(x), m)
    try:
        with frozen(model):
            yield
    finally:
        for m in layers:
            del m.forward


def attack_step(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        xi = x.clone().requires_grad_(True)
        loss = model(xi).logsumexp(1).sum()
        (g,) = torch.autograd.grad(loss, xi)
        return g
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-md", type=Path, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 1, 28, 28)
    stack = contextlib.ExitStack()
    fns: dict[str, Callable[[], object]] = {}
    params: dict[str, int] = {}
    for row in ROWS:
        variants = [(row, frozen)]
        if row.startswith("prune"):
            variants = [(f"{row} (dense kernels)", dense_kernels), (f"{row} (CSR, as evaluated)",
                                                                     frozen)]
        elif row.startswith("tucker"):
            variants = [(f"{row} (tltorch: rebuild W)", tltorch_rebuild),
                        (f"{row} (contracted, as evaluated)", frozen)]
        elif row.startswith("vgg16"):
            standard = functools.partial(frozen, channels_last=False)
            variants = [(f"{row} (standard layout)", standard),
                        (f"{row} (channels-last, as evaluated)", frozen)]
        for name, ctx in variants:
            model = build(row)
            params[name] = summary(model).total_nnz
            stack.enter_context(ctx(model))
            fns[name] = attack_step(model, x)
    before, t0 = cpu_seconds(), time.perf_counter()
    load = machine_info()
    with stack:
        timings, errors = time_interleaved(fns, repeats=args.repeats, warmup=3, budget_s=20)
    wall = time.perf_counter() - t0
    after = cpu_seconds()
    others = ("n/a" if before is None or after is None else
              f"{max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall:.2f}")
    ref = timings["dense-mlp"].median
    lines = [
        "# Cost of one attack step per model of the paper sweep",
        "",
        "Forward + backward w.r.t. the input of a batch of "
        f"{args.batch} Fashion-MNIST-sized images, models frozen as `sstorch eval` freezes "
        "them; median (p90) of round-robin timed runs; `vs dense` = the dense MLP's median / "
        "this one's (> 1: cheaper). Regenerate with",
        "",
        "```",
        f"python benchmarks/eval_cost.py --batch {args.batch} --repeats {args.repeats} "
        f"--threads {args.threads} --out-md docs/eval_cost.md",
        "```",
        "",
        f"Machine: {load['cpu']}, {load['cores']} cores, torch threads {args.threads}; torch "
        f"{load['torch']}, tensorly-torch {load['tltorch']}; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average before: "
        f"{load.get('load', 'n/a')}; CPU used by other processes during the run: {others} "
        "cores on average.",
        "",
        "| model | nonzero params | ms med (p90) | vs dense | runs |",
        "|---|---|---|---|---|",
    ]
    for name in fns:
        if name in errors:
            lines.append(f"| {name} | {params[name]:,} | error: {errors[name]} | – | – |")
            continue
        t = timings[name]
        lines.append(f"| {name} | {params[name]:,} | {t.median * 1e3:.3g} ({t.p90 * 1e3:.3g}) | "
                     f"{ref / t.median:.3g}× | {t.n} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out_md:
        args.out_md.write_text(text)


if __name__ == "__main__":
    main()
