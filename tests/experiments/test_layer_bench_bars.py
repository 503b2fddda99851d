"""The layer benchmark checks the bars its caller passes (the library holds none)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sstorch.experiments.layer_bench import DEFAULT_CASES, REFERENCE, BenchResult, Row
from sstorch.experiments.layer_bench_md import SpeedBar, check_bars, render_bench_markdown
from sstorch.experiments.timing import Timing

ROOT = Path(__file__).resolve().parents[2]


def _result(sep_ms: float, dense_ms: float | None) -> BenchResult:
    case = next(c for c in DEFAULT_CASES if c.key == "vgg-fc1")
    def t(ms: float) -> Timing:
        return Timing(ms / 1e3, ms / 1e3, 5)

    rows = [Row(case, REFERENCE, n_params=10, fwd=t(sep_ms / 2), fwd_bwd=t(sep_ms))]
    rows.append(Row(case, "dense", reason="too big") if dense_ms is None else
                Row(case, "dense", n_params=10, fwd=t(dense_ms / 2), fwd_bwd=t(dense_ms)))
    return BenchResult(rows=rows, threads=1, repeats=5, warmup=1, batch_scale=1.0)


BAR = SpeedBar("vgg-fc1", "dense", 50.0, "sep ≥ 50× faster than dense")


def test_a_bar_passes_fails_or_is_not_measured():
    assert check_bars(_result(2.0, 150.0), [BAR]) == [
        (BAR.text, True, "150 ms / 2 ms = 75×")]
    assert check_bars(_result(2.0, 60.0), [BAR])[0][1] is False
    assert check_bars(_result(2.0, 99.0), [BAR])[0][2].endswith("noise can flip it)")
    assert check_bars(_result(2.0, None), [BAR]) == [(BAR.text, None, "too big")]
    other = SpeedBar("cube16", "dense", 2.0, "cube")
    assert check_bars(_result(2.0, 150.0), [other]) == [("cube", None, "case not run")]


def test_markdown_has_a_bars_section_only_when_bars_are_given():
    result = _result(2.0, 150.0)
    assert "## Acceptance bars" not in render_bench_markdown(result, "sstorch bench")
    md = render_bench_markdown(result, "python benchmarks/layer_speed.py", [BAR])
    assert f"- {BAR.text}: **PASS** — 150 ms / 2 ms = 75×" in md


def test_the_projects_bars_live_in_the_benchmark_script():
    spec = importlib.util.spec_from_file_location("layer_speed",
                                                  ROOT / "benchmarks" / "layer_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert {(b.case, b.method, b.need) for b in mod.BARS} == {("vgg-fc1", "dense", 50.0),
                                                             ("vgg-fc1", "tcl", 1.0)}
    src = (ROOT / "src" / "sstorch" / "experiments" / "layer_bench_md.py").read_text()
    assert "50.0" not in src and "nn.Linear(25088" not in src
