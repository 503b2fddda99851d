"""Tests of ``sstorch report`` (:mod:`sstorch.experiments.report`).

Three hand-written run directories with realistic numbers (a separable MLP and its dense
counterpart, both evaluated by ``sstorch eval``, and a smaller separable MLP with only
``summary.json``), plus one real two-epoch digits run.
"""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sstorch.config import load_config
from sstorch.experiments.report import (
    PLOTS,
    load_run_record,
    main_report,
    pareto_front,
    write_report,
)
from sstorch.training.loop import train

# --------------------------------------------------------------------------- fixtures

SWEEP_EPS = [0.0, 0.05, 0.1, 0.15, 0.2]


def _kappa(kappa0: float, layer: int, epoch: int) -> float:
    """κ(W) of a layer at an epoch: falls as the condition-number penalty acts."""
    return kappa0 * 3 ** layer * (1 + 4 * 0.5 ** epoch)


def _metrics(path: Path, epochs: int, layers: list[str], kappa0: float, skill: float) -> None:
    """A metrics.csv with the columns `sstorch train` writes; κ grows slowly per epoch."""
    cols = ["epoch", "lr", "train_loss", "train_adv_acc", "val_clean_acc", "val_robust_acc",
            "reg_sparsity", "reg_cond", "train_seconds", "epoch_seconds"]
    cols += [f"kappa/{layer}" for layer in layers] + [f"nnz/{layer}" for layer in layers]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for e in range(1, epochs + 1):
            row = {"epoch": e, "lr": 0.1 * (1 - e / epochs),
                   "train_loss": 2.3 - skill * 0.9 * (1 - 0.6 ** e),
                   "train_adv_acc": 0.3 + 0.04 * e * skill,
                   "val_clean_acc": skill * (0.9 - 0.3 * 0.6 ** e),
                   "val_robust_acc": skill * (0.75 - 0.35 * 0.6 ** e),
                   "reg_sparsity": 17.4 - 0.1 * e, "reg_cond": 2.3 - 0.01 * e,
                   "train_seconds": 5.1, "epoch_seconds": 6.0}
            for j, layer in enumerate(layers):
                row[f"kappa/{layer}"] = _kappa(kappa0, j, e)
                row[f"nnz/{layer}"] = 2048 - 10 * e
            w.writerow(row)


def _run(root: Path, name: str, *, separable: bool, params: int, nnz: int, compression: float,
         clean: float, pgd20: float, layers: list[str], evaluation: dict | None,
         layer_kappas: list[float] | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        f"name: {name}\nout_dir: {root}\nepochs: 6\nmodel:\n  name: mlp\n  separable: "
        f"{str(separable).lower()}\ndata:\n  name: fashion-mnist\nattack:\n  name: pgd\n"
        "  eps: 0.1\n  steps: 10\n")
    _metrics(d / "metrics.csv", 6, layers, kappa0=4.0, skill=clean / 0.9)
    summary = {
        "run_dir": str(d), "model": "mlp", "separable": separable, "dataset": "fashion-mnist",
        "params": params, "nnz": nnz, "compression": compression, "fc_compression": compression,
        "test_clean_acc": clean, "test_pgd20_acc": pgd20, "test_n": 10000, "eps": 0.1,
        "eval_seconds": 41.5,
        "layers": [{"name": n, "kappa": k, "lipschitz": 1.3, "nnz": 1024}
                   for n, k in zip(layers, layer_kappas or [], strict=False)],
    }
    (d / "summary.json").write_text(json.dumps(summary, indent=2))
    if evaluation is not None:
        (d / "eval.json").write_text(json.dumps(evaluation, indent=2))
    return d


def _eval(d: Path, *, params: int, clean: float, pgd: float, aa: float, kappa: float | None,
          failed: tuple[str, ...] = ()) -> dict:
    checks = ["clean_above_robust", "more_steps_no_better", "eps_monotone", "unbounded_eps_zero",
              "black_box_not_stronger"]
    return {
        "run_dir": str(d), "checkpoint": str(d / "best.safetensors"), "dataset": "fashion-mnist",
        "model": "mlp", "separable": kappa is not None, "n": 1000, "eps": 0.1, "norm": "Linf",
        "params": params, "nnz": params, "compression": 115.2 if kappa else 1.0, "kappa": kappa,
        "clean_acc": clean,
        "attacks": {"clean": {"acc": clean, "seconds": 0.4, "n_attacked": 1000},
                    "fgsm": {"acc": pgd + 0.05, "seconds": 0.9, "n_attacked": 850},
                    # `sstorch eval` may record the steps; the report reads them when it does
                    "pgd": {"acc": pgd, "seconds": 12.0, "n_attacked": 850,
                            **({"steps": 50} if kappa is not None else {})},
                    "cw": {"acc": pgd + 0.01, "seconds": 11.0, "n_attacked": 850},
                    "autoattack": {"acc": aa, "seconds": 310.0, "n_attacked": 850}},
        "robust_acc": min(pgd, aa),
        "eps_sweep": [{"eps": e, "attack": a, "acc": max(0.0, clean - (3.2 if a == "pgd-50"
                                                                        else 3.5) * e)}
                      for a in ("pgd-50", "autoattack") for e in SWEEP_EPS],
        "sanity": [{"name": c, "passed": c not in failed,
                    "detail": "robust accuracy rose from 0.41 to 0.47 with 10x steps"
                    if c in failed else "ok"} for c in checks],
        "certified": {"lipschitz": 3.2, "radius_median": 0.004,
                      "certified_acc": {"0.01": 0.21, "0.05": 0.0}},
        "seed": 0, "date": "2025-01-01T12:00:00", "machine": "test box",
    }


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    sep = root / "sep-mlp"
    dense = root / "dense-mlp"
    return [
        _run(root, "sep-mlp", separable=True, params=16138, nnz=15002, compression=115.24,
             clean=0.8251, pgd20=0.7120, layers=["net.1", "net.3", "net.5"],
             layer_kappas=[2.0, 3.0, 4.0],
             evaluation=_eval(sep, params=16138, clean=0.8234, pgd=0.7012, aa=0.6843,
                              kappa=12.5)),
        _run(root, "dense-mlp", separable=False, params=1863690, nnz=1863690, compression=1.0,
             clean=0.8790, pgd20=0.7001, layers=[],
             evaluation=_eval(dense, params=1863690, clean=0.8712, pgd=0.6954, aa=0.6712,
                              kappa=None, failed=("more_steps_no_better",))),
        _run(root, "sep-mlp-small", separable=True, params=4210, nnz=4100, compression=420.5,
             clean=0.7811, pgd20=0.6120, layers=["net.1", "net.3"], evaluation=None),
    ]


def _row(md: str, label: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| [{label}]("))
    return [c.strip() for c in line.strip("|").split("|")]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size == (width, height)
        im.load()
        assert len(np.unique(np.asarray(im.convert("L").resize((64, 64))))) > 8  # not blank
    return width, height


# --------------------------------------------------------------------------- tests


def test_pareto_front() -> None:
    pts = [(16138, 0.6843), (1863690, 0.6712), (4210, 0.6120)]
    assert pareto_front(pts) == [2, 0]  # the dense run has more parameters and less accuracy
    assert pareto_front([]) == []
    assert pareto_front([(10, 0.5)]) == [0]
    # equal size: only the more accurate; equal points are both kept; NaN never on the front
    assert pareto_front([(10, 0.5), (10, 0.6), (20, 0.6)]) == [1]
    assert pareto_front([(10, 0.5), (10, 0.5)]) == [0, 1]
    assert pareto_front([(5, float("nan")), (10, 0.5), (3, 0.2), (30, 0.9)]) == [2, 1, 3]


def test_report_table(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main_report([*map(str, runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| run |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "run", "model", "dataset", "ε", "n", "parameters", "compression", "nnz", "clean", "PGD",
        "AutoAttack", "robust", "κ", "sanity"]

    sep = _row(md, "sep-mlp")  # eval.json wins over summary.json
    assert sep[1:5] == ["mlp (separable)", "fashion-mnist", "0.1", "1,000"]
    assert sep[5:8] == ["16,138", "115.2×", "16,138"]
    assert sep[8:] == ["82.3%", "70.1% (PGD-50)", "68.4%", "68.4%", "12.5", "✓ 5/5"]

    dense = _row(md, "dense-mlp")
    assert dense[1] == "mlp (dense)" and dense[5] == "1,863,690"
    assert dense[8:12] == ["87.1%", "69.5% (PGD)", "67.1%", "67.1%"]  # steps not recorded
    assert dense[12] == "—"  # no separable layers: no κ
    assert dense[13] == "✗ 4/5: more_steps_no_better"

    small = _row(md, "sep-mlp-small")  # no eval.json: summary.json, marked †
    assert small[0].endswith("†") and small[4] == "10,000"
    assert small[5:8] == ["4,210", "420.5×", "4,100"]
    assert small[8:12] == ["78.1%", "61.2% (PGD-20)", "—", "61.2%"]
    # κ from the last metrics.csv row (summary.json has no layer κ here)
    assert small[12] == f"{_kappa(4.0, 0, 6) * _kappa(4.0, 1, 6):.3g}" and small[13] == "—"
    assert "† no eval.json" in md

    # run links are relative to the report; failed checks are detailed below the table
    assert "(../runs/sep-mlp)" in md
    failed = md.split("## Failed sanity checks")[1].split("## Pareto front")[0]
    assert "### dense-mlp" in failed and "sep-mlp" not in failed.replace("dense-mlp", "")
    assert "✗ **more_steps_no_better**: robust accuracy rose from 0.41 to 0.47" in failed
    assert "✓ **eps_monotone**: ok" in failed
    pareto = md.split("## Pareto front")[1].split("##")[0]
    assert "sep-mlp-small (4,210, 61.2%), sep-mlp (16,138, 68.4%)" in pareto
    assert "Dominated: dense-mlp." in pareto
    assert "κ from eval.json" in md and "κ from metrics.csv epoch 6" in md


def test_report_plots(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write_report(runs, out)
    md = report.read_text()
    for name in PLOTS:
        assert f"]({name})" in md  # linked from report.md
        w, h = _png_size(out / name)
        assert w >= 1000 and h >= 600, (name, w, h)
    # the κ plot skips the dense run and says so; the ε plot names the run without a sweep
    assert "No kappa/* columns in metrics.csv (not plotted): dense-mlp." in md
    assert "without an ε sweep in eval.json (shown as one star at their ε): sep-mlp-small" in md


def test_default_out_dir_and_summary_kappa(runs: list[Path], tmp_path: Path) -> None:
    (runs[2] / "summary.json").write_text(json.dumps(
        {**json.loads((runs[2] / "summary.json").read_text()),
         "layers": [{"name": "net.1", "kappa": 3.0}, {"name": "net.3", "kappa": float("inf")}]}))
    report = write_report([runs[2]])
    assert report == tmp_path / "reports" / "report.md"
    assert _row(report.read_text(), "sep-mlp-small")[12] == "∞"  # rank-deficient layer
    # a deep model's product of κ is kept in log space: no overflow to a false ∞
    (runs[2] / "summary.json").write_text(json.dumps(
        {**json.loads((runs[2] / "summary.json").read_text()),
         "layers": [{"name": f"blocks.{i}.fc", "kappa": 9.9e99} for i in range(4)]}))
    md = write_report([runs[2]]).read_text()
    assert _row(md, "sep-mlp-small")[12] == "9.61e+399"


def test_bad_input(tmp_path: Path, runs: list[Path], capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"not-a-run is not a run directory.*summary\.json"):
        write_report([runs[0], empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the input is checked
    with pytest.raises(ValueError, match="missing is not a directory"):
        load_run_record(tmp_path / "missing")
    with pytest.raises(ValueError, match="no run directories"):
        write_report([])
    with pytest.raises(SystemExit):
        main_report([])
    capsys.readouterr()
    (runs[1] / "eval.json").write_text('{"clean_acc": 0.9, ')
    with pytest.raises(ValueError, match=r"dense-mlp/eval\.json is not valid JSON"):
        write_report(runs, tmp_path / "out")
    (runs[1] / "eval.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"eval\.json holds a JSON list"):
        load_run_record(runs[1])
    (runs[2] / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"metrics\.csv has no 'epoch' column"):
        load_run_record(runs[2])


def test_report_on_a_real_run(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(load_config(None, [
            "data.name=digits", "model.hidden=[[4,4]]", "epochs=2", "data.train_subset=200",
            "eval.n=50", "attack.steps=2", "eval.pgd_steps=2", "eval.val_pgd_steps=2",
            "device=cpu", f"out_dir={tmp_path / 'runs'}"]), log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    assert main_report([str(run)]) == 0
    out = tmp_path / "reports"
    md = (out / "report.md").read_text()
    s = json.loads((run / "summary.json").read_text())
    row = _row(md, run.name)
    assert row[1:3] == ["mlp (separable)", "digits"] and row[5] == f"{s['params']:,}"
    assert row[8] == f"{100 * s['test_clean_acc']:.1f}%"
    assert row[9] == f"{100 * s['test_pgd2_acc']:.1f}% (PGD-2)" and row[10] == "—"
    assert row[12] == f"{s['layers'][0]['kappa']:.3g}"
    for name in PLOTS:
        _png_size(out / name)
