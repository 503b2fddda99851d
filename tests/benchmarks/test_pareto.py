"""benchmarks/pareto.py: the Pareto front, the rows' sparsity structure and the outputs
(no timing is asserted: speed belongs in the benchmark's own output)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from sstorch.structure.summary import summary

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("pareto", ROOT / "benchmarks" / "pareto.py")
pareto = importlib.util.module_from_spec(spec)
sys.modules["pareto"] = pareto  # its dataclasses resolve annotations through sys.modules
spec.loader.exec_module(pareto)

PAPER = ROOT / "configs" / "paper-fmnist"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_pareto_front_keeps_only_undominated_points() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 2.0]
    ys = [0.5, 0.4, 0.7, 0.6, 0.6]
    # (2, 0.4) is beaten by (1, 0.5); (4, 0.6) by (3, 0.7); (2, 0.6) stays
    assert pareto.pareto_front(xs, ys) == [0, 4, 2]


@pytest.mark.parametrize(("method", "nnz"), [("prune-mlp-200x", 6122), ("hydra-mlp-200x", 6122),
                                             ("sep-mlp-200x", 6122)])
def test_rows_get_their_nonzero_count(method: str, nnz: int) -> None:
    model = pareto.structured_model(PAPER / f"{method}.yaml", nnz)
    assert summary(model).total_nnz == nnz


def test_outputs_for_three_rows(tmp_path: Path) -> None:
    out_csv, png = tmp_path / "d.csv", tmp_path / "d.png"
    assert pareto.main([str(PAPER), "--methods", "sep-mlp-200x,prune-mlp-200x,narrow-mlp-200x",
                        "--rounds", "1", "--per-round", "2", "--warmup", "1",
                        "--csv", str(out_csv), "--figure", str(png)]) == 0
    with open(out_csv, newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["sep-mlp-200x", "prune-mlp-200x", "narrow-mlp-200x"]
    assert rows["sep-mlp-200x"]["family"] == "separable"
    assert rows["prune-mlp-200x"]["family"] == "other"
    # the pruned MLP stores its bitmask over all 1.86 M dense weights: ≥ 1.86e6 / 8 bytes
    assert int(rows["prune-mlp-200x"]["bytes_packed"]) >= 1_863_690 // 8
    assert int(rows["sep-mlp-200x"]["bytes_packed"]) < 4 * 6122 + 4096  # weights + header
    for r in rows.values():
        assert float(r["b1_ms_median"]) > 0 and 0 < float(r["autoattack_acc"]) < 1
    assert png.stat().st_size > 10_000
