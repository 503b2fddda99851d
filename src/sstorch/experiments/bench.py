"""Layer-speed benchmark: :class:`SeparableLinear` against dense and tensor-factorized layers.

For every case (``in_shape → out_shape`` at a batch size) each method is built at the same
shapes and timed on the same input ``x (*batch, *in_shape)``:

* forward, under ``torch.no_grad``;
* forward + backward: ``x.requires_grad_()``, ``loss = y.sum()``, ``loss.backward()``, with the
  gradients set to ``None`` before every run.

Each timing is the median (and p90) of up to ``repeats`` runs after ``warmup`` runs, cut short
after ``budget_s`` seconds of measurement (at least 3 runs), so the slow dense rows need no
special casing. Within a case the methods are timed round-robin (one untimed and one timed run
of each in turn), so a change in machine load hits all of them alike and the ratios stay
comparable. Achieved
GFLOP/s count ``2 × MACs`` of the algorithm the method executes; backward is counted as twice
the forward, so forward + backward is ``3 ×`` forward.

Methods (keys for ``--methods``):

* ``sep-auto`` / ``sep-left`` / ``sep-cyclic`` / ``sep-unfold``: ``SeparableLinear`` and
  :func:`sstorch.functional.kronecker.mode_products` with each explicit strategy, same parameters;
* ``dense``: ``nn.Linear(N, M)`` on the flattened input;
* ``materialize``: ``W = layer.to_dense()`` inside the timed region, then ``x @ Wᵀ + b``;
* ``tcl``: tensorly-torch ``TCL(in_shape, rank=out_shape)`` (Tucker mode products, rank 1);
* ``tl-tt``: tensorly-torch ``FactorizedLinear(factorization='blocktt')`` with TT ranks
  ``(1, R, …, R, 1)`` — for R = 1 exactly the Kronecker product ``U_1 ⊗ … ⊗ U_K``;
* ``tl-cp``: tensorly-torch ``FactorizedLinear(factorization='cp', rank=R)``, a CP
  decomposition of the ``2K``-way weight tensor (a rank-R *matrix*, not a Kronecker sum).

tensorly-torch is optional (``pip install sstorch[bench]``); its rows read ``n/a (reason)``
without it. Methods whose largest intermediate tensor, measured by a forward pass on the
``meta`` device, exceeds ``max_gib`` are reported as ``n/a (OOM est. …)`` instead of being run.

Usage::

    sstorch bench --repeats 30 --out-md docs/benchmarks.md
    python benchmarks/layer_speed.py --batch-scale 0.25 --cases mnist,vgg-fc1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from sstorch.functional.kronecker import mode_products
from sstorch.io.provenance import cpu_model
from sstorch.layers.separable import SeparableLinear

__all__ = [
    "DEFAULT_CASES",
    "METHODS",
    "BenchResult",
    "LayerCase",
    "Row",
    "Timing",
    "format_table",
    "main_layer_bench",
    "render_markdown",
    "run_layer_benchmark",
    "time_callable",
    "time_interleaved",
]


# ---------------------------------------------------------------------------------------------
# Timing utilities
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Summary of repeated wall-clock measurements, in seconds."""

    median: float
    p90: float
    n: int

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Timing:
        """Median and linearly interpolated 90th percentile of ``samples``."""
        if not samples:
            raise ValueError("no samples")
        s = sorted(samples)
        pos = 0.9 * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        p90 = s[lo] + (s[hi] - s[lo]) * (pos - lo)
        return cls(statistics.median(s), p90, len(s))


def time_callable(
    fn: Callable[[], object],
    repeats: int = 30,
    warmup: int = 3,
    budget_s: float | None = None,
    min_repeats: int = 3,
) -> Timing:
    """Time ``fn()`` with ``time.perf_counter``: ``warmup`` untimed calls, then up to ``repeats``.

    Measurement stops early once ``budget_s`` seconds have been spent in timed calls and at
    least ``min(min_repeats, repeats)`` samples exist.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(warmup, 0)):
        fn()
    samples: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
        if budget_s is not None and spent >= budget_s and len(samples) >= min(min_repeats, repeats):
            break
    return Timing.from_samples(samples)


class _PeakTensorMode(TorchDispatchMode):
    """Records the size in bytes of the largest tensor any operator produces."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.peak_bytes = max(self.peak_bytes, t.numel() * t.element_size())
        return out


def meta_forward_stats(build: Callable[[torch.device], Callable[[Tensor], Tensor]],
                       x_shape: Sequence[int]) -> tuple[int, int]:
    """``(largest intermediate in bytes, GEMM FLOPs)`` of one forward pass, run on ``meta``.

    Nothing is allocated or computed, so this is safe for layers that would exhaust memory.
    """
    fwd = build(torch.device("meta"))
    x = torch.empty(*x_shape, device="meta")
    peak, flops = _PeakTensorMode(), FlopCounterMode(display=False)
    with torch.no_grad(), flops, peak:
        fwd(x)
    return peak.peak_bytes, flops.get_total_flops()


# ---------------------------------------------------------------------------------------------
# Cases and methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCase:
    """One benchmark shape: input ``(*batch_shape, *in_shape)`` → ``(*batch_shape, *out_shape)``."""

    key: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    rank: int = 1
    description: str = ""

    @property
    def in_features(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    @property
    def tokens(self) -> int:
        """Number of rows ``B`` the layer maps (batch × tokens)."""
        return math.prod(self.batch_shape)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (*self.batch_shape, *self.in_shape)

    def scaled(self, scale: float) -> LayerCase:
        """The same case with the leading batch dimension multiplied by ``scale`` (≥ 1)."""
        if scale == 1:
            return self
        lead = max(1, round(self.batch_shape[0] * scale))
        return LayerCase(self.key, self.in_shape, self.out_shape,
                         (lead, *self.batch_shape[1:]), self.rank, self.description)

    def label(self) -> str:
        ins, outs = "×".join(map(str, self.in_shape)), "×".join(map(str, self.out_shape))
        batch = "×".join(map(str, self.batch_shape))
        rank = f", rank {self.rank}" if self.rank != 1 else ""
        return f"({ins}) → ({outs}), batch {batch}{rank}"


DEFAULT_CASES: tuple[LayerCase, ...] = (
    LayerCase("mnist", (28, 28), (32, 32), (128,), description="MNIST MLP input layer"),
    LayerCase("vgg-fc1", (512, 7, 7), (16, 16, 16), (64,),
              description="VGG-16 first FC layer, nn.Linear(25088, 4096)"),
    LayerCase("cube16", (16, 16, 16), (16, 16, 16), (64,), description="4096 → 4096, 3 modes"),
    LayerCase("vit-mlp", (12, 16), (24, 32), (64, 65),
              description="ViT-Tiny MLP fc1 192 → 768, 64 images × 65 tokens"),
    LayerCase("mnist-r2", (28, 28), (32, 32), (128,), rank=2,
              description="MNIST shape, rank-2 Kronecker sum"),
)


class Unavailable(Exception):
    """A method cannot run on a case; the message is the reason shown in the table."""


@dataclass
class Prepared:
    """A built method: ``forward(x)`` on the case's input and the tensors it trains."""

    forward: Callable[[Tensor], Tensor]
    params: list[Tensor]
    fwd_flops: int
    note: str = ""


def _separable(case: LayerCase, device: torch.device) -> SeparableLinear:
    return SeparableLinear(case.in_shape, case.out_shape, rank=case.rank, device=device)


def _n_params(params: Sequence[Tensor]) -> int:
    return sum(p.numel() for p in params)


def _build_sep(strategy: str | None) -> Callable[[LayerCase, torch.device], Prepared]:
    """SeparableLinear itself (``strategy=None``) or its mode products with a fixed strategy."""

    def build(case: LayerCase, device: torch.device) -> Prepared:
        if strategy in ("unfold", "left") and case.rank != 1:
            raise Unavailable(f"{strategy} strategy is rank 1 only")
        layer = _separable(case, device)
        flops = 2 * layer.macs_per_example() * case.tokens
        if strategy is None:
            return Prepared(layer, list(layer.parameters()), flops)
        k = layer.n_modes

        def forward(x: Tensor) -> Tensor:  # SeparableLinear.forward with the strategy pinned
            batch = x.shape[: x.dim() - k]
            y = mode_products(x.reshape(-1, *layer.in_shape), layer.effective_factors(),
                              strategy=strategy)
            return (y.reshape(-1, layer.out_features) + layer.bias).reshape(*batch,
                                                                            *layer.out_shape)

        return Prepared(forward, list(layer.parameters()), flops)

    return build


def _build_dense(case: LayerCase, device: torch.device) -> Prepared:
    lin = nn.Linear(case.in_features, case.out_features, device=device)
    n = case.in_features

    def forward(x: Tensor) -> Tensor:
        return lin(x.reshape(-1, n))

    return Prepared(forward, list(lin.parameters()),
                    2 * case.tokens * case.in_features * case.out_features)


def _build_materialize(case: LayerCase, device: torch.device) -> Prepared:
    layer = _separable(case, device)
    n = case.in_features

    def forward(x: Tensor) -> Tensor:
        w = layer.to_dense()
        return torch.addmm(layer.bias, x.reshape(-1, n), w.t())

    mn = case.in_features * case.out_features
    return Prepared(forward, list(layer.parameters()), 2 * case.tokens * mn + case.rank * mn)


def _import_tltorch():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tltorch
    except ImportError as exc:
        raise Unavailable("tensorly-torch not installed; pip install sstorch[bench]") from exc
    return tltorch


def _build_tcl(case: LayerCase, device: torch.device) -> Prepared:
    tltorch = _import_tltorch()
    if case.rank != 1:
        raise Unavailable("TCL is a single Tucker/Kronecker term (rank 1)")
    # tltorch 0.5's TCL(bias=True) fails (reads self.output_shape before setting it), so the
    # same out_shape bias as SeparableLinear's is added outside.
    tcl = tltorch.TCL(case.in_shape, rank=case.out_shape, bias=False, device=device)
    bias = nn.Parameter(torch.zeros(case.out_shape, device=device))

    def forward(x: Tensor) -> Tensor:
        return tcl(x.reshape(-1, *case.in_shape)) + bias

    return Prepared(forward, [*tcl.parameters(), bias], 0)


def _build_factorized(factorization: str) -> Callable[[LayerCase, torch.device], Prepared]:
    def build(case: LayerCase, device: torch.device) -> Prepared:
        tltorch = _import_tltorch()
        k = len(case.in_shape)
        rank = (1, *([case.rank] * (k - 1)), 1) if factorization == "blocktt" else case.rank
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lin = tltorch.FactorizedLinear(
                in_tensorized_features=case.in_shape, out_tensorized_features=case.out_shape,
                factorization=factorization, rank=rank, implementation="factorized",
                device=device)
        n = case.in_features

        def forward(x: Tensor) -> Tensor:
            return lin(x.reshape(-1, n))

        return Prepared(forward, list(lin.parameters()), 0, note=f"rank={rank}")

    return build


METHODS: dict[str, tuple[str, Callable[[LayerCase, torch.device], Prepared]]] = {
    "sep-auto": ("SeparableLinear (auto)", _build_sep(None)),
    "sep-left": ("SeparableLinear, left", _build_sep("left")),
    "sep-cyclic": ("SeparableLinear, cyclic", _build_sep("cyclic")),
    "sep-unfold": ("SeparableLinear, unfold", _build_sep("unfold")),
    "dense": ("nn.Linear(N, M)", _build_dense),
    "materialize": ("to_dense() then matmul", _build_materialize),
    "tcl": ("tltorch TCL", _build_tcl),
    "tl-tt": ("tltorch FactorizedLinear tt", _build_factorized("blocktt")),
    "tl-cp": ("tltorch FactorizedLinear cp", _build_factorized("cp")),
}
REFERENCE = "sep-auto"
BUSY_LOAD = 1.5  # 1-min load average before the run above which it is flagged as disturbed
BUSY_OTHERS = 0.2  # average cores used by *other* processes during the run, ditto


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One (case, method) measurement; ``reason`` is set when it could not run."""

    case: LayerCase
    method: str
    n_params: int | None = None
    fwd: Timing | None = None
    fwd_bwd: Timing | None = None
    fwd_flops: int = 0
    reason: str = ""

    @property
    def name(self) -> str:
        return METHODS[self.method][0]


@dataclass
class BenchResult:
    """All rows of one run plus the settings and machine they were measured on."""

    rows: list[Row]
    threads: int
    repeats: int
    warmup: int
    batch_scale: float
    max_gib: float = 1.0
    machine: dict[str, str] = field(default_factory=dict)

    def row(self, case_key: str, method: str) -> Row | None:
        for r in self.rows:
            if r.case.key == case_key and r.method == method:
                return r
        return None


def _short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "memory" in msg.lower() or isinstance(exc, MemoryError):
        return "OOM"
    return f"{type(exc).__name__}: {msg[:80]}"


def _prepare(case: LayerCase, method: str, max_bytes: int, seed: int
             ) -> tuple[Row, Prepared | None]:
    """Build one method on the CPU after a ``meta``-device memory check."""
    build = METHODS[method][1]
    row = Row(case, method)
    try:
        peak, gemm_flops = meta_forward_stats(lambda dev: build(case, dev).forward, case.x_shape)
        if peak > max_bytes:
            raise Unavailable(f"OOM est.: {peak / 2**30:.1f} GiB intermediate")
        torch.manual_seed(seed)
        prep = build(case, torch.device("cpu"))
    except Unavailable as exc:
        row.reason = str(exc)
        return row, None
    except (RuntimeError, MemoryError, ValueError, TypeError) as exc:
        row.reason = _short_error(exc)
        return row, None
    row.n_params = _n_params(prep.params)
    row.fwd_flops = prep.fwd_flops or gemm_flops
    return row, prep


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int = 30,
    warmup: int = 3,
    budget_s: float | None = None,
    min_repeats: int = 3,
    settle: int = 1,
) -> tuple[dict[str, Timing], dict[str, BaseException]]:
    """Time several callables round-robin, so that load changes hit all of them alike.

    Each round times one call of every callable still running, preceded by ``settle``
    untimed calls of the same callable, so that no method pays for the caches its
    predecessor in the round evicted. A callable stops after ``repeats`` samples, or once it
    has spent ``budget_s`` seconds in timed calls and has ``min_repeats`` samples. A callable
    that raises is dropped and its exception returned.

    Returns:
        ``(timings, errors)`` keyed like ``fns``.
    """
    errors: dict[str, BaseException] = {}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    spent = dict.fromkeys(fns, 0.0)
    active = list(fns)
    for k in list(active):
        try:  # warm-up: stop early for slow callables, once half the budget is spent
            t0 = time.perf_counter()
            for _ in range(max(warmup, 0)):
                fns[k]()
                if budget_s is not None and time.perf_counter() - t0 >= budget_s / 2:
                    break
        except (RuntimeError, MemoryError) as exc:
            errors[k] = exc
            active.remove(k)
    while active:
        for k in list(active):
            try:
                for _ in range(settle):
                    fns[k]()
                t0 = time.perf_counter()
                fns[k]()
                dt = time.perf_counter() - t0
            except (RuntimeError, MemoryError) as exc:
                errors[k] = exc
                active.remove(k)
                continue
            samples[k].append(dt)
            spent[k] += dt
            n = len(samples[k])
            if n >= repeats or (budget_s is not None and spent[k] >= budget_s
                                and n >= min(min_repeats, repeats)):
                active.remove(k)
    timings = {k: Timing.from_samples(v) for k, v in samples.items() if k not in errors and v}
    return timings, errors


def _measure_case(case: LayerCase, methods: Sequence[str], repeats: int, warmup: int,
                  budget_s: float, max_bytes: int, seed: int) -> list[Row]:
    """All methods on one case, forward and fwd+bwd each timed round-robin across methods."""
    rows, fwd_fns, fb_fns = {}, {}, {}
    torch.manual_seed(seed)
    x = torch.randn(case.x_shape).requires_grad_()
    for method in methods:
        row, prep = _prepare(case, method, max_bytes, seed)
        rows[method] = row
        if prep is None:
            continue

        def fwd(prep: Prepared = prep) -> None:
            with torch.no_grad():
                prep.forward(x)

        def fwd_bwd(prep: Prepared = prep) -> None:
            x.grad = None
            for p in prep.params:
                p.grad = None
            prep.forward(x).sum().backward()

        fwd_fns[method], fb_fns[method] = fwd, fwd_bwd
    for fns, attr in ((fwd_fns, "fwd"), (fb_fns, "fwd_bwd")):
        timings, errors = time_interleaved(fns, repeats, warmup, budget_s)
        for method, t in timings.items():
            setattr(rows[method], attr, t)
        for method, exc in errors.items():
            rows[method].reason = _short_error(exc)
    for row in rows.values():  # a method that failed in one mode is n/a in both
        if row.reason:
            row.fwd = row.fwd_bwd = None
    return [rows[m] for m in methods]


def cpu_seconds() -> tuple[float, float] | None:
    """``(busy CPU-seconds of the whole machine since boot, CPU-seconds of this process)``.

    Busy time is user + nice + system + irq + softirq + steal from ``/proc/stat``; ``None``
    where that file does not exist.
    """
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(vals[:3]) + sum(vals[5:8])
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def _section_marks(key: str) -> tuple[str, str]:
    return f"<!-- begin:{key} -->", f"<!-- end:{key} -->"


def markdown_sections(text: str) -> dict[str, str]:
    """``{key: block}`` of every ``<!-- begin:key --> … <!-- end:key -->`` block in ``text``
    (markers included): sections other generators own, kept when this one rewrites a file."""
    out: dict[str, str] = {}
    for m in re.finditer(r"<!-- begin:([\w.-]+) -->.*?<!-- end:\1 -->", text, re.S):
        out[m.group(1)] = m.group(0)
    return out


def update_section(path: str | os.PathLike, key: str, body: str) -> None:
    """Replace the ``key`` block of the markdown file ``path`` by ``body`` (append it when the
    file has none; create the file when missing); the rest of the file is kept."""
    begin, end = _section_marks(key)
    block = f"{begin}\n{body.strip()}\n{end}"
    text = open(path).read() if os.path.exists(path) else ""
    old = markdown_sections(text).get(key)
    text = text.replace(old, block) if old else f"{text.rstrip()}\n\n{block}\n".lstrip()
    with open(path, "w") as f:
        f.write(text)


def machine_info() -> dict[str, str]:
    """CPU model (from ``/proc/cpuinfo``), core count, versions and the load average."""
    info = {
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tltorch
        info["tltorch"] = getattr(tltorch, "__version__", "installed")
    except ImportError:
        info["tltorch"] = "not installed"
    if hasattr(os, "getloadavg"):
        info["load"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return info


def run_layer_benchmark(
    cases: Sequence[LayerCase] | None = None,
    methods: Sequence[str] | None = None,
    repeats: int = 30,
    warmup: int = 3,
    batch_scale: float = 1.0,
    threads: int | None = None,
    budget_s: float = 3.0,
    max_gib: float = 1.0,
    seed: int = 0,
    progress: Callable[[Row], None] | None = None,
) -> BenchResult:
    """Time every method on every case (see the module docstring for what is measured).

    Args:
        cases: shapes to run (default :data:`DEFAULT_CASES`).
        methods: keys of :data:`METHODS` (default all; ``sep-auto`` is always added as the
            reference for the ratio columns).
        repeats, warmup: timed and untimed runs per measurement.
        batch_scale: multiply each case's leading batch dimension (e.g. 0.25 for a quick run).
        threads: ``torch.set_num_threads`` for the run (default: all cores); restored after.
        budget_s: stop repeating a measurement after this many seconds (at least 3 runs).
        max_gib: skip a method whose largest forward intermediate exceeds this size.
        seed: ``torch.manual_seed`` before building each method and its input.
        progress: called with each finished :class:`Row`.
    """
    cases = list(DEFAULT_CASES if cases is None else cases)
    methods = list(METHODS if methods is None else methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)
    threads = threads or os.cpu_count() or 1
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = machine_info()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    rows = []
    try:
        for case in cases:
            case = case.scaled(batch_scale)
            case_rows = _measure_case(case, methods, repeats, warmup, budget_s,
                                      int(max_gib * 2**30), seed)
            rows += case_rows
            if progress is not None:
                for row in case_rows:
                    progress(row)
    finally:
        torch.set_num_threads(old_threads)
    cpu1, wall = cpu_seconds(), time.perf_counter() - wall0
    if cpu0 is not None and cpu1 is not None:
        others = ((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / wall
        machine["others_cores"] = f"{max(others, 0.0):.2f}"
    machine["wall_s"] = f"{wall:.0f}"
    return BenchResult(rows, threads, repeats, warmup, batch_scale, max_gib, machine)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _num(v: float) -> str:
    """Three significant digits without scientific notation (``1,630``, ``20.4``, ``0.441``)."""
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v >= 0.001 else f"{v:.1e}"


def _ms(t: Timing) -> str:
    return f"{_num(t.median * 1e3)} ({_num(t.p90 * 1e3)})"


def _ratio(t: Timing | None, ref: Timing | None) -> str:
    if t is None or ref is None:
        return "–"
    return f"{_num(t.median / ref.median)}×"


def format_table(result: BenchResult) -> str:
    """Markdown table, one block of rows per case; ratios are time / SeparableLinear's time."""
    head = ("| case | method | params | fwd ms med (p90) | fwd GFLOP/s | fwd vs Sep "
            "| fwd+bwd ms med (p90) | fwd+bwd GFLOP/s | fwd+bwd vs Sep | runs |")
    lines = [head, "|" + "---|" * 10]
    for r in result.rows:
        ref = result.row(r.case.key, REFERENCE)
        case = f"`{r.case.key}`"
        if r.reason:
            na = f"n/a ({r.reason})"
            lines.append(f"| {case} | {r.name} | – | {na} | – | – | {na} | – | – | – |")
            continue
        assert r.fwd is not None and r.fwd_bwd is not None
        gf_f = r.fwd_flops / r.fwd.median / 1e9
        gf_fb = 3 * r.fwd_flops / r.fwd_bwd.median / 1e9
        lines.append(
            f"| {case} | {r.name} | {r.n_params:,} | {_ms(r.fwd)} | {_num(gf_f)} "
            f"| {_ratio(r.fwd, ref.fwd if ref else None)} | {_ms(r.fwd_bwd)} | {_num(gf_fb)} "
            f"| {_ratio(r.fwd_bwd, ref.fwd_bwd if ref else None)} | {r.fwd.n}/{r.fwd_bwd.n} |")
    return "\n".join(lines)


def check_acceptance(result: BenchResult) -> list[tuple[str, bool | None, str]]:
    """The bars on ``vgg-fc1``: Sep fwd+bwd ≥ 50× faster than dense and not slower than TCL.

    Returns ``(bar, passed or None if not measured, detail)`` triples.
    """
    out: list[tuple[str, bool | None, str]] = []
    sep = result.row("vgg-fc1", REFERENCE)
    for method, bar, need in (
        ("dense", "SeparableLinear fwd+bwd ≥ 50× faster than nn.Linear(25088, 4096)", 50.0),
        ("tcl", "SeparableLinear fwd+bwd not slower than tltorch TCL", 1.0),
    ):
        other = result.row("vgg-fc1", method)
        if sep is None or other is None or sep.fwd_bwd is None or other.fwd_bwd is None:
            reason = other.reason if other is not None and other.reason else "case not run"
            out.append((bar, None, reason))
            continue
        speedup = other.fwd_bwd.median / sep.fwd_bwd.median
        detail = (f"{other.fwd_bwd.median * 1e3:.3g} ms / {sep.fwd_bwd.median * 1e3:.3g} ms "
                  f"= {speedup:.3g}×")
        if abs(speedup / need - 1) < 0.05:
            detail += " (within 5% of the bar: run-to-run noise can flip it)"
        out.append((bar, speedup >= need, detail))
    return out


def _observations(result: BenchResult) -> list[str]:
    """Data-driven remarks: which strategy won per case, and which methods beat Sep."""
    notes = []
    for key in dict.fromkeys(r.case.key for r in result.rows):
        auto = result.row(key, "sep-auto")
        timed = {s: r.fwd_bwd.median for s in ("left", "cyclic", "unfold")
                 if (r := result.row(key, f"sep-{s}")) and r.fwd_bwd}
        if auto and auto.fwd_bwd and len(timed) > 1:
            best = min(timed, key=timed.get)
            ratio = sorted(timed.values())[1] / timed[best]
            notes.append(f"`{key}`: {best} is the fastest strategy for fwd+bwd ({ratio:.2f}× "
                         f"ahead of the next); auto runs at {auto.fwd_bwd.median * 1e3:.3g} ms.")
        for m in METHODS:
            other = result.row(key, m)
            if m.startswith("sep-"):
                continue
            if auto and auto.fwd_bwd and other and other.fwd_bwd and (
                    other.fwd_bwd.median < auto.fwd_bwd.median):
                notes.append(f"`{key}`: {other.name} fwd+bwd is faster than SeparableLinear "
                             f"({other.fwd_bwd.median * 1e3:.3g} vs "
                             f"{auto.fwd_bwd.median * 1e3:.3g} ms).")
    return notes


def render_markdown(result: BenchResult, command: str) -> str:
    """The full ``docs/benchmarks.md``: machine, acceptance bars, table and method notes."""
    m = result.machine
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    bars = check_acceptance(result)
    status = {True: "**PASS**", False: "**FAIL**", None: "not measured"}
    lines = [
        "# Layer speed benchmark",
        "",
        "SeparableLinear against a dense `nn.Linear`, materialising the Kronecker weight, and",
        "tensorly-torch's factorized layers at equal shapes. Generated by `sstorch bench` —",
        "do not edit by hand; regenerate with:",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} logical cores; "
        f"torch threads: {result.threads}",
        f"- torch {m.get('torch', '?')}, tensorly-torch {m.get('tltorch', '?')}, "
        f"Python {m.get('python', '?')}, {m.get('platform', '?')}",
        f"- date: {when}; run took {m.get('wall_s', '?')} s; load average (1/5/15 min) "
        f"before the run: {m.get('load', '?')}; CPU used by other processes during the run: "
        f"{m.get('others_cores', '?')} cores on average (from `/proc/stat`)",
        f"- settings: up to {result.repeats} timed runs after {result.warmup} warm-up runs "
        f"(fewer for slow rows, see `runs`), batch scale {result.batch_scale:g}, float32, "
        f"memory cap {result.max_gib:g} GiB per intermediate tensor",
        "",
    ]
    if _busy(result):
        lines += [
            f"**The machine was busy (load before > {BUSY_LOAD} or other processes used "
            f"> {BUSY_OTHERS} cores during the run):**",
            "other processes shared the cores, so absolute times are inflated and noisy; the",
            "ratios are less affected because the methods of a case are timed round-robin.",
            "",
        ]
    lines += [
        "## Acceptance bars (`vgg-fc1`: (512×7×7) → (16×16×16), batch 64)",
        "",
    ]
    lines += [f"- {bar}: {status[ok]} — {detail}" for bar, ok, detail in bars]
    lines += ["", "## Cases", ""]
    seen = []
    for r in result.rows:
        if r.case.key not in seen:
            seen.append(r.case.key)
            lines.append(f"- `{r.case.key}`: {r.case.label()} — {r.case.description}")
    lines += [
        "",
        "## Results",
        "",
        "Times in ms: median (p90). `vs Sep` = this method's time / SeparableLinear (auto)'s",
        "time in the same run (> 1 means slower than SeparableLinear). GFLOP/s count 2 × MACs",
        "of the method's own algorithm; fwd+bwd counts 3 × the forward FLOPs. `runs` = timed",
        "forward / fwd+bwd runs. The methods of a case are timed round-robin, each timed run",
        "right after an untimed run of the same method (warm caches, shared load).",
        "",
        format_table(result),
        "",
        "## Observations from this run",
        "",
    ]
    lines += [f"- {n}" for n in _observations(result)] or ["- none"]
    lines += [
        "",
        "## Methods",
        "",
        "- **SeparableLinear (auto)**: the layer as shipped; `left` / `cyclic` / `unfold` call",
        "  `sstorch.functional.kronecker.mode_products` with that strategy on the same parameters.",
        "  FLOPs: `2 · layer.macs_per_example() · B`.",
        "- **nn.Linear(N, M)** on the flattened input. FLOPs: `2 · B · N · M`.",
        "- **to_dense() then matmul**: `W = layer.to_dense()` is built inside the timed region",
        "  (and differentiated through in fwd+bwd). FLOPs: `2 · B · N · M + R · N · M`.",
        "- **tltorch TCL**: `TCL(in_shape, rank=out_shape)` on `(B, *in_shape)`; tensorly's",
        "  unfolding-based `multi_mode_dot`. tensorly-torch 0.5's `TCL(bias=True)` raises",
        "  (`self.output_shape` is read before it is set), so an equal-sized bias is added",
        "  outside. Rank 1 only.",
        "- **tltorch FactorizedLinear tt**: `factorization='blocktt'` (tltorch's TT-matrix;",
        "  there is no `'tt'` key for matrices), `implementation='factorized'`, TT ranks",
        "  `(1, R, …, R, 1)`. With R = 1 its weight is exactly `U_1 ⊗ … ⊗ U_K`, the same",
        "  function class and parameter count as SeparableLinear; for K = 2 also at R > 1.",
        "  (`'tucker'` at rank 1, like `'cp'`, would be a rank-1 matrix, so it is not shown.)",
        "- **tltorch FactorizedLinear cp**: `factorization='cp'`, `implementation='factorized'`,",
        "  rank R: CP of the `(m_1, …, m_K, n_1, …, n_K)` weight tensor, i.e. a rank-R *matrix*",
        "  (far fewer degrees of freedom than a Kronecker product). Without `opt_einsum` torch",
        "  contracts its einsum left to right and first forms a `B × N × M × R` outer product",
        "  (24.5 GiB on `vgg-fc1`; it failed allocating 26 GB when simply tried), so rows whose",
        "  largest intermediate, measured on the `meta` device, exceeds the memory cap are",
        "  reported `n/a (OOM est.)` without running; a `RuntimeError` while running is",
        "  reported `n/a (OOM)` or `n/a (<the error>)`.",
        "- tltorch rows count FLOPs with `torch.utils.flop_counter` on a `meta`-device forward",
        "  (the GEMMs their einsums actually execute).",
    ]
    return "\n".join(lines) + "\n"


def _busy(result: BenchResult) -> bool:
    """Whether other processes disturbed the run (see ``BUSY_LOAD`` and ``BUSY_OTHERS``)."""
    load, others = result.machine.get("load", ""), result.machine.get("others_cores", "")
    return bool((load and float(load.split()[0]) > BUSY_LOAD)
                or (others and float(others) > BUSY_OTHERS))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sstorch bench", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30, help="max timed runs per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--batch-scale", type=float, default=1.0,
                   help="multiply the batch sizes (e.g. 0.25 for a quick run)")
    p.add_argument("--cases", type=str, default=None,
                   help="comma-separated case keys: " + ",".join(c.key for c in DEFAULT_CASES))
    p.add_argument("--methods", type=str, default=None,
                   help="comma-separated method keys: " + ",".join(METHODS))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds of timed runs after which a measurement stops (min 3 runs)")
    p.add_argument("--max-gib", type=float, default=1.0,
                   help="skip methods whose largest forward intermediate exceeds this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-md", type=str, default=None, help="write the markdown report here")
    return p.parse_args(argv)


def main_layer_bench(argv: list[str] | None = None, *, prog: str = "sstorch bench") -> int:
    """CLI entry: run the benchmark, print the table and bars, optionally write markdown.

    ``prog`` is the command recorded in the markdown as the way to regenerate it.
    """
    args = _parse_args(argv)
    by_key = {c.key: c for c in DEFAULT_CASES}
    cases = list(DEFAULT_CASES)
    if args.cases:
        keys = [k.strip() for k in args.cases.split(",") if k.strip()]
        bad = [k for k in keys if k not in by_key]
        if bad:
            print(f"unknown cases {bad}; choose from {list(by_key)}", file=sys.stderr)
            return 2
        cases = [by_key[k] for k in keys]
    methods = None
    if args.methods:
        methods = [k.strip() for k in args.methods.split(",") if k.strip()]
        bad = [k for k in methods if k not in METHODS]
        if bad:
            print(f"unknown methods {bad}; choose from {list(METHODS)}", file=sys.stderr)
            return 2

    def progress(row: Row) -> None:
        t = row.fwd_bwd
        what = f"{t.median * 1e3:.3g} ms fwd+bwd" if t else f"n/a ({row.reason})"
        print(f"  {row.case.key:9s} {row.name:30s} {what}", file=sys.stderr, flush=True)

    result = run_layer_benchmark(cases, methods, repeats=args.repeats, warmup=args.warmup,
                                 batch_scale=args.batch_scale, threads=args.threads,
                                 budget_s=args.budget, max_gib=args.max_gib, seed=args.seed,
                                 progress=progress)
    print(format_table(result))
    print()
    m = result.machine
    print(f"load before: {m.get('load', '?')}; other processes used "
          f"{m.get('others_cores', '?')} cores on average during the run")
    if _busy(result):
        print("warning: the machine was busy; timings are disturbed")
    for bar, ok, detail in check_acceptance(result):
        print(f"{bar}: {({True: 'PASS', False: 'FAIL', None: 'not measured'})[ok]} ({detail})")
    if args.out_md:
        shown = argv if argv is not None else sys.argv[1:]
        command = " ".join([prog, *(shlex.quote(a) for a in shown)])
        os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
        kept = (markdown_sections(open(args.out_md).read()) if os.path.exists(args.out_md)
                else {})  # e.g. the deploy benchmark's section (benchmarks/deploy.py)
        with open(args.out_md, "w") as f:
            f.write(render_markdown(result, command))
            f.writelines(f"\n{block}\n" for block in kept.values())
        print(f"wrote {args.out_md}")
    return 0
