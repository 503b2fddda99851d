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

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sstorch.experiments.timing import (
    Timing,
    cpu_seconds,
    machine_info,
    meta_forward_stats,
    time_interleaved,
)
from sstorch.functional.kronecker import mode_products
from sstorch.layers.separable import SeparableLinear


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


