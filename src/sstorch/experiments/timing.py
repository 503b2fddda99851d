"""Timing helpers for benchmarks: robust medians, interleaved timing, peak memory on ``meta``,
CPU-seconds and machine descriptions, and the ``<!-- bench:KEY -->`` sections of markdown files."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from sstorch.io.provenance import cpu_model

BUSY_LOAD = 1.5  # 1-min load average before the run above which it is flagged as disturbed
BUSY_OTHERS = 0.2  # average cores used by *other* processes during the run, ditto


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


# Cases and methods




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


