"""``sstorch sweep``: manifest checks, job order, resumable stages, CSV/table/plots, run
directories held by another process (engines: test_engine.py, test_engine_ray.py).

The end-to-end sweep trains two tiny digits MLPs (one of them on two seeds) for one epoch and
evaluates them on 40 test images with a 2-step PGD and the standard AutoAttack.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sstorch.cli import main
from sstorch.experiments.engine import SerialEngine
from sstorch.experiments.locks import held_by, job_lock
from sstorch.experiments.manifest import jobs, load_manifest
from sstorch.experiments.schedule import run_sweep
from sstorch.experiments.tables import CSV_COLUMNS
from sstorch.io.fsutil import DirectoryBusy, lock_dir

RECIPE = {
    "epochs": 1, "device": "cpu",
    "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
    "attack": {"name": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
    "optim": {"name": "adamw", "lr": 0.01, "schedule": "none"},
    "eval": {"pgd_steps": 2},
}


def _write_sweep(root: Path, rows: list[dict], **manifest: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    models = {
        "dense": {"name": "mlp", "structure": "dense", "hidden": [[4, 4]]},
        "sep": {"name": "mlp", "structure": "separable", "hidden": [[4, 4]]},
    }
    constraints = {"lambda_sparsity": 0.0, "lambda_cond": 0.0}
    for method, model in models.items():
        cfg = {"name": method, **RECIPE, "model": model, "constraints": constraints}
        (root / f"{method}.yaml").write_text(yaml.safe_dump(cfg))
    tree = {
        "out_dir": str(root / "runs"), "csv": str(root / "out" / "r.csv"),
        "details_csv": str(root / "out" / "d.csv"), "figures": str(root / "fig"),
        "training_csv": str(root / "out" / "t.csv"),
        "markdown": str(root / "results.md"), "reference": "dense",
        "eval": {"pgd_steps": 2, "pgd_restarts": 1, "n": 40}, "rows": rows, **manifest,
    }
    (root / "sweep.yaml").write_text(yaml.safe_dump(tree))
    return root


ROWS = [{"method": "dense", "seeds": [0, 1]}, {"method": "sep", "seeds": [0]}]


def test_jobs_are_seed_major(tmp_path):
    m = load_manifest(_write_sweep(tmp_path, ROWS))
    assert [(j.method, j.seed) for j in jobs(m)] == [("dense", 0), ("sep", 0), ("dense", 1)]
    assert jobs(m)[2].run_dir == tmp_path / "runs" / "dense" / "seed1"


@pytest.mark.parametrize(
    ("rows", "extra", "match"),
    [
        ([{"method": "nope"}], {}, "nope.yaml does not exist"),
        ([{"seeds": [0]}], {}, r"rows\[0\] needs a 'method'"),
        ([{"method": "sep", "init_from": "dense"}], {}, "init_from 'dense', not a row"),
        (ROWS, {"reference": "other"}, "reference 'other' is not a row"),
        (ROWS, {"colour": 1}, "unknown keys"),
        ([], {}, "lists no rows"),
        ([{"method": "sep", "reference": "nope"}], {}, "reference 'nope', not a row"),
        ([{"method": "sep", "eval": {"steps": 3}}], {}, r"rows\[0\]\.eval must be"),
        ([{"method": "sep", "colour": 1}], {}, r"rows\[0\] has unknown keys \['colour'\]"),
        ([{"method": "sep", "teacher": "nope"}], {}, "teacher 'nope', not a row"),
        (ROWS, {"eval": {"n": 5, "restarts": 2}}, r"eval has unknown keys \['restarts'\]"),
    ],
)
def test_bad_manifests(tmp_path, rows, extra, match):
    root = _write_sweep(tmp_path, rows, **extra)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_manifest(root)


def test_rows_override_eval_and_reference(tmp_path):
    """A row's ``eval`` keys override the manifest's for its jobs only; its ``reference``
    decides its compression (its family's dense model, not the manifest's)."""
    from sstorch.experiments.collect import _reference, _structure, _with_fc_compression

    rows = [{"method": "dense", "seeds": [0]},
            {"method": "sep", "seeds": [0], "eval": {"n": 7}, "reference": "sep"}]
    m = load_manifest(_write_sweep(tmp_path, rows))
    evals = {j.method: j.eval for j in jobs(m)}
    assert evals["dense"] == {"pgd_steps": 2, "pgd_restarts": 1, "n": 40}
    assert evals["sep"] == {"pgd_steps": 2, "pgd_restarts": 1, "n": 7}
    assert (_reference(m, "dense"), _reference(m, "sep")) == ("dense", "sep")
    (dense_params, dense_fc), (sep_params, sep_fc) = _structure(m, "dense"), _structure(m, "sep")
    assert dense_params == dense_fc > sep_params == sep_fc  # digits: 64-16-10 vs (8,8)->(4,4)
    # FC-only compression is against the row's reference: 1 for both here
    cache: dict = {}
    assert _with_fc_compression(m, {"method": "sep"}, sep_params, cache)["fc_compression"] == 1
    assert _with_fc_compression(m, {"method": "dense"}, dense_params // 4,
                                cache)["fc_compression"] == pytest.approx(4, rel=0.01)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sweep\.yaml not found"):
        load_manifest(tmp_path)


def test_job_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    run = tmp_path / "a"
    with job_lock(run) as lock:
        assert held_by(run) == f"sstorch sweep, pid {os.getpid()}"
        with pytest.raises(DirectoryBusy, match=f"held by another process .*pid {os.getpid()}"):
            with job_lock(run):
                pass
    assert held_by(run) is None and lock.is_file()  # released, the file stays
    lock.write_text("999999999 some-boot")  # a 0.1 pid file: nobody holds it
    with job_lock(run):
        pass
    # a holder that is killed releases it (the kernel drops its flock)
    code = ("import sys, time; from pathlib import Path; "
            "from sstorch.experiments.locks import job_lock\n"
            "with job_lock(Path(sys.argv[1])):\n print('in', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "in"
        assert held_by(run) == f"sstorch sweep, pid {proc.pid}"
    finally:
        proc.kill()
        proc.wait()
    assert held_by(run) is None
    with lock_dir(run, "sstorch train"):  # the run-dir lock of train / eval counts too
        assert held_by(run) == f"sstorch train, pid {os.getpid()}"


def test_sweep_end_to_end_and_resume(tmp_path, capsys):
    root = _write_sweep(tmp_path / "s", ROWS)
    (root / "results.md").write_text("intro\n<!-- sweep:table -->\nold\n<!-- /sweep:table -->\n"
                                     "discussion\n")
    assert main(["sweep", str(root), "--threads", "1"]) == 0

    with open(root / "out" / "r.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert [(r["method"], r["seed"]) for r in rows] == [("dense", "0"), ("dense", "1"),
                                                         ("sep", "0")]
    dense_params = int(rows[0]["params"])
    for r in rows:
        for k in ("clean_acc", "pgd50_acc", "autoattack_acc"):
            assert 0.0 <= float(r[k]) <= 1.0
        assert float(r["autoattack_acc"]) <= float(r["pgd50_acc"]) <= float(r["clean_acc"])
        assert math.isclose(float(r["compression"]), dense_params / int(r["nnz"]),
                            rel_tol=1e-3)
        assert float(r["train_seconds"]) > 0
        ev = json.loads((root / "runs" / r["method"] / f"seed{r['seed']}" / "eval.json")
                        .read_text())
        assert ev["n"] == 40 and ev["attacks"]["pgd"]["steps"] == 2
        assert float(r["clean_acc"]) == ev["clean_acc"]
    assert int(rows[2]["params"]) < dense_params  # the separable model is smaller
    text = (root / "results.md").read_text()
    assert text.startswith("intro\n<!-- sweep:table -->\n| method |") and "old" not in text
    assert text.endswith("<!-- /sweep:table -->\ndiscussion\n")
    assert "| dense | 2 |" in text and "| sep | 1 |" in text
    with open(root / "out" / "d.csv", newline="") as f:
        details = list(csv.DictReader(f))
    for d in details:  # κ of every FC matrix, product over layers (finite for these MLPs)
        assert math.isfinite(float(d["log10_kappa_fc"])) and float(d["log10_kappa_fc"]) > 0
        assert d["sanity_passed"] == d["sanity_total"] == "6"
        run = root / "runs" / d["method"] / f"seed{d['seed']}"
        with open(run / "metrics.csv", newline="") as f:
            epochs = list(csv.DictReader(f))
        assert float(d["final_train_loss"]) == round(float(epochs[-1]["train_loss"]), 4)
        best = epochs[int(d["best_epoch"]) - 1]  # the epoch best.safetensors was saved at
        assert float(d["best_val_robust_acc"]) == float(best["val_robust_acc"]) == max(
            float(e["val_robust_acc"]) for e in epochs[: int(d["best_epoch"])])
        assert float(d["best_val_clean_acc"]) == float(best["val_clean_acc"])
    with open(root / "out" / "t.csv", newline="") as f:
        trained = list(csv.DictReader(f))
    assert [(t["method"], t["seed"], t["state"]) for t in trained] == [
        (d["method"], d["seed"], "evaluated") for d in details]
    assert [t["best_val_robust_acc"] for t in trained] == [d["best_val_robust_acc"]
                                                            for d in details]
    assert (root / "fig" / "pareto_autoattack.png").stat().st_size > 1000
    assert (root / "fig" / "eps_sweep.png").stat().st_size > 1000

    # A second call finds everything done: nothing is retrained or re-evaluated.
    done = root / "runs" / "dense" / "seed0"
    stamps = {p: p.stat().st_mtime_ns for p in (done / "summary.json", done / "eval.json")}
    capsys.readouterr()
    assert main(["sweep", str(root), "--threads", "1"]) == 0
    assert "== train" not in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # An interrupted job resumes at its unfinished stage: evaluation only, then training.
    (done / "sweep.json").unlink()
    assert main(["sweep", str(root), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "trained" in listed and "evaluation under way" not in listed
    # A journalled, unfinished evaluation shows its progress under the latest key only.
    journal = done / "eval.journal.jsonl"
    journal.write_text("\n".join(json.dumps(r) for r in [
        {"key": "old", "batch": 0, "n": 7}, {"key": "new", "batch": 0, "n": 5},
        {"key": "new", "batch": 1, "n": 3}]) + '\n{"key": "new", "bat')
    assert main(["sweep", str(root), "--list"]) == 0
    assert "(evaluation under way: 8 test images in 2 journalled batches)" in (
        capsys.readouterr().out)
    journal.unlink()
    assert main(["sweep", str(root), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "== evaluate dense seed 0" in out and "== train" not in out
    (done / "summary.json").unlink()
    (done / "sweep.json").unlink()
    assert main(["sweep", str(root), "--threads", "1"]) == 0
    assert "== train dense seed 0 (resumed)" in capsys.readouterr().out


def _entry(method: str, accs: list[float]) -> dict:
    from sstorch.experiments.stats import mean_std

    n = len(accs)
    mean, std = mean_std(accs)
    return {"method": method, "seeds": list(range(n)),
            "vals": {"autoattack_acc": list(accs), "clean_acc": [a + 0.1 for a in accs]},
            "stats": {"autoattack_acc": (mean, std), "clean_acc": (mean + 0.1, std)}}


def test_claims_are_checked_against_the_means():
    from sstorch.experiments.claims import render_claims

    rows = [_entry("dense", [0.66, 0.68]), _entry("sep10", [0.655, 0.66]),
            _entry("sep300", [0.56]), _entry("lowrank", [0.20]), _entry("prune", [0.58]),
            _entry("none", [0.55])]
    within = {"kind": "within", "method": "sep10", "reference": "dense", "points": 1.5}
    assert "-1.25 points → **holds**" in render_claims([within], rows)
    assert "**does not hold**" in render_claims([{**within, "points": 1.0}], rows)
    assert "matches or beats" in render_claims([{**within, "method": "dense",
                                                 "reference": "sep10"}], rows)
    beats = {"kind": "beats", "method": "sep300", "others": ["lowrank", "prune"]}
    text = render_claims([beats], rows)
    assert "**beats 1 of 2**" in text and "+36.00 points → beats" in text
    assert "-2.00 points → loses" in text
    assert "**beats every one**" in render_claims([{**beats, "others": ["lowrank"]}], rows)
    assert "**pending**" in render_claims([{**beats, "others": ["lowrank", "tt"]}], rows)
    # rows that ran different seeds are also compared on the seeds they share
    seeds3 = _entry("sep3", [0.62, 0.61, 0.10])
    text = render_claims([{**beats, "method": "sep3", "others": ["prune"]}], [*rows, seeds3])
    assert "-13.67 points (seed-matched, seed 0: +4.00) → loses" in text
    assert "seed-matched" not in render_claims([{**beats, "others": ["prune"]}], rows)
    abl = {"kind": "ablation", "reference": "none", "others": ["sep300"], "metric": "clean_acc"}
    assert "`sep300` 66.00 % (1 seed): +1.00 points" in render_claims([abl], rows)
    # a difference smaller than the seed-to-seed std (sample std of 60 and 62 %: 1.41) says so
    close = [_entry("a2", [0.60, 0.62]), _entry("b1", [0.605]), _entry("c1", [0.55])]
    text = render_claims([{"kind": "beats", "method": "a2", "others": ["b1", "c1"]}], close)
    assert "+0.50 points (seed-matched, seed 0: -0.50) → beats, less than the seed spread " \
        "±1.41\n" in text
    assert "+6.00 points (seed-matched, seed 0: +5.00) → beats\n" in text
    assert "**beats every one** — 1 of the differences is smaller than the seed-to-seed" in text
    text = render_claims([{"kind": "within", "method": "b1", "reference": "a2",
                           "points": 1.5}], close)
    assert "→ **holds** (bar: at most 1.5 points below, the margin to the bar is within the " \
        "seed spread ±1.41)" in text
    text = render_claims([{"kind": "ablation", "reference": "a2", "others": ["b1", "c1"]}], close)
    assert "-0.50 points (seed-matched, seed 0: +0.50), less than the seed spread ±1.41\n" in text
    assert "-6.00 points (seed-matched, seed 0: -5.00)\n" in text


def test_claims_must_name_rows(tmp_path):
    root = _write_sweep(tmp_path, ROWS, claims=[{"kind": "within", "method": "sep",
                                                 "reference": "nope"}])
    with pytest.raises(ValueError, match=r"names \['nope'\], not rows"):
        load_manifest(root)
    root = _write_sweep(tmp_path, ROWS, claims=[{"kind": "guess"}])
    with pytest.raises(ValueError, match="needs kind one of"):
        load_manifest(root)


def test_a_failing_job_does_not_stop_the_others_and_only_filters(tmp_path, capsys):
    root = _write_sweep(tmp_path / "s", ROWS)
    bad = yaml.safe_load((root / "sep.yaml").read_text())
    bad["optim"]["lr"] = 1e30  # diverges: the run stops with TrainingDiverged
    (root / "sep.yaml").write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(root), "--threads", "1", "--only", "sep,dense"]) == 1
    out = capsys.readouterr()
    assert "!! sep seed 0 failed: TrainingDiverged" in out.out
    assert "call the command again to retry them" in out.err
    error = (root / "runs" / "sep" / "seed0" / "sweep-error.txt").read_text()
    assert error.startswith("TrainingDiverged:")
    for seed in (0, 1):  # the dense jobs, queued around the failure, still ran
        assert (root / "runs" / "dense" / f"seed{seed}" / "sweep.json").is_file()
    assert main(["sweep", str(root), "--only", "nope,dense:7"]) == 1
    assert "--only names ['dense:7', 'nope'], neither rows nor" in capsys.readouterr().err
    bad["optim"]["lr"] = 0.01  # fixed: the half-trained run is stale, the retry says so
    (root / "sep.yaml").write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(root), "--threads", "1", "--only", "sep:0"]) == 1
    assert "optim.lr: 1e+30 → 0.01" in capsys.readouterr().err
    # moved aside, the next call retries only the failed job
    assert main(["sweep", str(root), "--threads", "1", "--only", "sep:0", "--move-stale"]) == 0
    assert not (root / "runs" / "sep" / "seed0" / "sweep-error.txt").exists()
    assert "== train dense" not in capsys.readouterr().out


def test_fc_matrices_cover_every_kind_of_fc_layer():
    from torch import nn

    from sstorch.experiments.stages import fc_matrices
    from sstorch.layers.lowrank import LowRankLinear
    from sstorch.layers.separable import SeparableLinear

    model = nn.Sequential(nn.Flatten(), SeparableLinear((2, 3), (4, 2), flatten=True),
                          LowRankLinear(8, 5, rank=1), nn.Linear(5, 3))
    mats = dict(fc_matrices(model))
    assert list(mats) == ["1", "2", "3"]
    assert [tuple(w.shape) for w in mats.values()] == [(8, 6), (5, 8), (3, 5)]
    assert int(torch.linalg.matrix_rank(mats["2"].detach())) == 1  # W = A B of rank 1


def test_only_selects_methods_or_single_seeds(tmp_path):
    from sstorch.experiments.manifest import selected

    m = load_manifest(_write_sweep(tmp_path, ROWS))
    picked = lambda only: [(j.method, j.seed) for j in jobs(m) if selected(j, only)]  # noqa: E731
    assert picked(None) == [("dense", 0), ("sep", 0), ("dense", 1)]
    assert picked({"dense"}) == [("dense", 0), ("dense", 1)]
    assert picked({"dense:1", "sep"}) == [("sep", 0), ("dense", 1)]


def test_seconds_are_averaged_per_device_when_seeds_ran_on_different_machines():
    from sstorch.experiments.tables import device_label, render_table, summarize

    cpu = "CPU AMD EPYC (2 cores), torch threads 1; Linux 6.1; torch 2.14.1"
    gpu = "NVIDIA H200; Linux 6.18; torch 2.11.0"
    assert device_label(cpu) == "CPU" and device_label(gpu) == "NVIDIA H200"
    assert device_label(None) == "?"

    def run(seed: int, machine: str, train_s: float, trained_on: str | None = None
            ) -> tuple[dict, dict]:
        row = {"method": "dense", "params": 10, "nnz": 10, "compression": 1.0, "seed": seed,
               "clean_acc": 0.8, "pgd50_acc": 0.7, "autoattack_acc": 0.6,
               "train_seconds": train_s}
        detail = {"log10_kappa_fc": 1.0, "sanity_passed": 6, "sanity_total": 6,
                  "eval_seconds": train_s / 2, "machine": machine, "train_machine": trained_on}
        return row, detail

    runs = [run(0, cpu, 1000.0), run(1, gpu, 40.0), run(2, gpu, 60.0)]
    table = render_table(summarize([r for r, _ in runs], [d for _, d in runs]))
    assert "| 1000 (CPU, 1) / 50 (NVIDIA H200, 2) | 500 (CPU, 1) / 25 (NVIDIA H200, 2) |" in table
    one = render_table(summarize([runs[0][0]], [runs[0][1]]))
    assert "| 1000 | 500 |" in one
    # trained on the GPU, evaluated on the CPU: each column is labelled by its own machine
    runs = [run(0, cpu, 1000.0), run(1, cpu, 40.0, trained_on=gpu)]
    table = render_table(summarize([r for r, _ in runs], [d for _, d in runs]))
    assert "| 1000 (CPU, 1) / 40 (NVIDIA H200, 1) | 260 |" in table
    # a row trained only on the GPU in a table trained mostly on the CPU names its device
    other = dict(runs[1][0], method="sep")
    rows = [runs[0][0], dict(runs[0][0], seed=1), other]
    details = [runs[0][1], runs[0][1], runs[1][1]]
    table = render_table(summarize(rows, details))
    assert "| dense | 2 |" in table and "| 1000 | 500 |" in table
    assert "| 40 (NVIDIA H200) | 20 |" in table


def test_stale_runs_are_refused_moved_aside_and_left_out_of_the_table(tmp_path, capsys):
    from dataclasses import asdict

    from sstorch.config import load_config
    from sstorch.experiments.manifest import job_overrides
    from sstorch.experiments.stages import config_drift

    root = _write_sweep(tmp_path / "s", [{"method": "sep", "seeds": [0]}], reference="sep")
    job = jobs(load_manifest(root))[0]
    job.run_dir.mkdir(parents=True)
    saved = asdict(load_config(job.config, job_overrides(job)))
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_drift(job) == {}  # the same recipe: not stale

    cfg = yaml.safe_load((root / "sep.yaml").read_text())
    cfg["attack"]["eps"] = 0.2
    (root / "sep.yaml").write_text(yaml.safe_dump(cfg))
    assert config_drift(job) == {"attack.eps": (0.1, 0.2)}
    assert main(["sweep", str(root), "--list"]) == 0
    assert "stale" in capsys.readouterr().out
    assert main(["sweep", str(root), "--threads", "1"]) != 0
    err = capsys.readouterr().err
    assert "seed0: attack.eps: 0.1 → 0.2" in err and "--move-stale" in err
    assert not (job.run_dir / "summary.json").exists()  # nothing ran

    with job_lock(job.run_dir):  # a live sweep (this process) still runs the stale run
        assert main(["sweep", str(root), "--threads", "1", "--move-stale"]) != 0
        err = capsys.readouterr().err
        assert f"held by sstorch sweep, pid {os.getpid()}" in err and "nothing was moved" in err
        assert not list(job.run_dir.parent.glob("seed0.stale-*"))

    assert main(["sweep", str(root), "--threads", "1", "--move-stale"]) == 0
    moved = list(job.run_dir.parent.glob("seed0.stale-*"))
    assert len(moved) == 1 and (moved[0] / "config.yaml").is_file()  # kept, not deleted
    assert (job.run_dir / "sweep.json").is_file() and config_drift(job) == {}
    with open(root / "out" / "r.csv", newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["sep"]

    cfg["attack"]["eps"] = 0.3  # the recipe changes again: the finished run leaves the table
    (root / "sep.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["sweep", str(root), "--report-only"]) == 0
    assert "left out of the table" in capsys.readouterr().out
    with open(root / "out" / "t.csv", newline="") as f:  # the training table says why
        assert [(r["method"], r["state"]) for r in csv.DictReader(f)] == [("sep", "stale")]
    with open(root / "out" / "r.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []


def test_a_job_waits_for_a_starting_point_another_process_is_training(tmp_path,
                                                                      monkeypatch, capsys):
    from sstorch.experiments import schedule

    rows = [{"method": "dense", "seeds": [0]},
            {"method": "sep", "seeds": [0], "init_from": "dense"}]
    m = load_manifest(_write_sweep(tmp_path, rows))
    serial = SerialEngine()
    assert run_sweep(m, serial, only={"sep"}) == 1  # nobody trains dense: give up at once
    assert "which this call does not train (add dense to --only)" in capsys.readouterr().out

    class Waited(Exception):
        pass

    def sleep(seconds: float) -> None:
        raise Waited(seconds)

    monkeypatch.setattr(schedule, "pause", sleep)
    # another process trains dense (flock is per open file: this process's lock counts)
    (m.out_dir / "dense" / "seed0").mkdir(parents=True)
    with lock_dir(m.out_dir / "dense" / "seed0", "sstorch train"):
        with pytest.raises(Waited):
            run_sweep(m, serial, only={"sep"})
    assert "waiting for 1 run(s) another process holds" in capsys.readouterr().out
    assert run_sweep(m, serial, only={"sep"}) == 1  # it stopped: nothing to wait for


def test_a_second_sweep_waits_for_a_run_the_first_holds_and_never_retrains_it(
        tmp_path, monkeypatch, capsys):
    """While one ``sstorch sweep`` holds a run, a second one on the same directory does the
    other jobs, waits, then finds the run finished and does not train it again."""
    from sstorch.experiments import schedule

    m = load_manifest(_write_sweep(tmp_path, [{"method": "dense", "seeds": [0, 1]}],
                                   eval={"pgd_steps": 1, "n": 8}))
    first, second = jobs(m)
    lock = job_lock(first.run_dir)
    lock.__enter__()  # the first sweep is at work on dense seed 0
    sleeps = []

    def sleep(seconds: float) -> None:  # meanwhile the first sweep finishes its job
        sleeps.append(seconds)
        lock.__exit__(None, None, None)
        assert schedule.run_task("train", first, m).state == "done"
        assert schedule.run_task("evaluate", first, m).state == "done"

    monkeypatch.setattr(schedule, "pause", sleep)
    try:
        capsys.readouterr()
        assert run_sweep(m, SerialEngine()) == 0
    finally:
        lock.__exit__(None, None, None)
    out = capsys.readouterr().out
    assert sleeps == [schedule.RETRY_SECONDS]
    assert f"{first.run_dir} is held by another process (sstorch sweep, pid" in out
    assert out.count("== train dense seed 0") == 1 and out.count("== train dense seed 1") == 1
    assert out.index("== train dense seed 1") < out.index("waiting for 1 run(s)")
    assert first.evaluated and second.evaluated


def test_a_row_distilled_from_another_waits_for_its_teacher_then_uses_it(tmp_path):
    from sstorch.experiments.manifest import job_overrides

    rows = [{"method": "dense", "seeds": [0]}, {"method": "sep", "seeds": [0], "teacher": "dense"}]
    m = load_manifest(_write_sweep(tmp_path, rows, eval={"pgd_steps": 1, "n": 8}))
    student = next(j for j in jobs(m) if j.method == "sep")
    teacher_dir = m.out_dir / "dense" / "seed0"
    assert student.teacher == teacher_dir and student.needs == [teacher_dir]
    assert f"distill.teacher={teacher_dir}" in job_overrides(student)
    assert run_sweep(m, SerialEngine(), only={"sep"}) == 1  # nobody trains the teacher
    assert not student.run_dir.exists()
    assert run_sweep(m, SerialEngine()) == 0  # the teacher first, then the student
    saved = yaml.safe_load((student.run_dir / "config.yaml").read_text())
    assert saved["distill"]["teacher"] == str(teacher_dir) and saved["distill"]["method"] == "rslad"
    assert student.evaluated


def test_records_rebuild_the_table_without_run_directories(tmp_path, capsys):
    import shutil

    root = _write_sweep(tmp_path / "s", ROWS, records=str(tmp_path / "s" / "records"))
    assert main(["sweep", str(root), "--threads", "1"]) == 0
    recs = sorted((root / "records").rglob("*.json"))
    assert [p.relative_to(root / "records").as_posix() for p in recs] == [
        "dense/seed0.json", "dense/seed1.json", "sep/seed0.json"]
    rec = json.loads(recs[0].read_text())
    assert rec["config"]["model"]["structure"] == "dense" and rec["details"]["eps_sweep"]
    before = {n: (root / "out" / n).read_text() for n in ("r.csv", "d.csv", "t.csv")}

    shutil.rmtree(root / "runs")  # a fresh checkout: only the committed records are left
    (root / "fig" / "eps_sweep.png").unlink()
    assert main(["sweep", str(root), "--report-only"]) == 0
    assert {n: (root / "out" / n).read_text() for n in before} == before
    assert (root / "fig" / "eps_sweep.png").stat().st_size > 1000  # redrawn from the records
    capsys.readouterr()
    assert main(["sweep", str(root), "--list"]) == 0
    assert capsys.readouterr().out.count("recorded") == 3
    assert main(["sweep", str(root), "--threads", "1"]) == 0  # recorded jobs count as done
    assert "== train" not in capsys.readouterr().out
    assert not (root / "runs" / "dense").exists()

    # A record without ε-sweep data keeps the existing figure rather than drop its curves.
    stamp = (root / "fig" / "eps_sweep.png").stat().st_mtime_ns
    rec["details"]["eps_sweep"] = None
    recs[0].write_text(json.dumps(rec))
    assert main(["sweep", str(root), "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "ε-sweep plot kept as it is: dense" in out
    assert (root / "fig" / "eps_sweep.png").stat().st_mtime_ns == stamp
    # ...and draws the rows that have their sweeps (here sep) in a figure of their own,
    assert "ε-sweep plot of sep drawn in" in out
    assert (root / "fig" / "eps_sweep_partial.png").stat().st_size > 1000
    # which goes once every row is back in the full figure.
    rec["details"]["eps_sweep"] = json.loads(recs[1].read_text())["details"]["eps_sweep"]
    recs[0].write_text(json.dumps(rec))
    assert main(["sweep", str(root), "--report-only"]) == 0
    assert "kept as it is" not in capsys.readouterr().out
    assert (root / "fig" / "eps_sweep.png").stat().st_mtime_ns != stamp
    assert not (root / "fig" / "eps_sweep_partial.png").exists()

    # A record made with another config is stale: out of the table, and its job runs again.
    cfg = yaml.safe_load((root / "sep.yaml").read_text())
    cfg["attack"]["eps"] = 0.2
    (root / "sep.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(root), "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "left out of the table" in out and "sep/seed0.json is stale" in out
    with open(root / "out" / "r.csv", newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["dense", "dense"]
    assert main(["sweep", str(root), "--threads", "1", "--only", "sep"]) == 0
    assert "== train sep seed 0" in capsys.readouterr().out
    assert json.loads(recs[2].read_text())["config"]["attack"]["eps"] == 0.2

    # --ignore-records reruns a recorded job; its new record replaces the old one.
    old = recs[1].read_text()
    assert main(["sweep", str(root), "--threads", "1", "--only", "dense:1",
                 "--ignore-records"]) == 0
    assert "== train dense seed 1" in capsys.readouterr().out
    assert recs[1].read_text() != old and (root / "runs" / "dense" / "seed1" / "eval.json"
                                           ).is_file()


def test_a_job_whose_starting_point_is_only_recorded_gets_a_clear_error(tmp_path, capsys):
    from sstorch.config import load_config
    from sstorch.experiments.manifest import job_overrides
    from sstorch.experiments.records import record_path

    rows = [{"method": "dense", "seeds": [0]}, {"method": "sep", "seeds": [0],
                                                 "init_from": "dense"}]
    root = _write_sweep(tmp_path / "s", rows, records=str(tmp_path / "s" / "records"))
    m = load_manifest(root)
    dense = jobs(m)[0]
    path = record_path(m, "dense", 0)
    path.parent.mkdir(parents=True)
    rec = {"config": load_config(dense.config, job_overrides(dense)).to_dict()}
    path.write_text(json.dumps(rec))
    assert main(["sweep", str(root), "--report-only"]) != 0
    assert "seed0.json is not a sweep record (lacks ['details', 'row', 'training'])" in (
        capsys.readouterr().err)
    rec["row"] = {"method": "dense", "params": 100, "nnz": 100, "compression": 1.0, "seed": 0,
                  "clean_acc": 0.5, "pgd50_acc": 0.4, "autoattack_acc": 0.3,
                  "train_seconds": 1.0}
    rec["details"] = {"method": "dense", "seed": 0, "log10_kappa_fc": 1.0, "sanity_passed": 6,
                      "sanity_total": 6, "eval_n": 40, "eval_seconds": 1.0, "machine": "CPU",
                      "date": "2026-11-26", "eps_sweep": None}
    rec["training"] = {"method": "dense", "seed": 0, "state": "evaluated", "train_seconds": 1.0}
    path.write_text(json.dumps(rec))
    assert main(["sweep", str(root), "--threads", "1"]) == 1  # nothing trains
    out = capsys.readouterr().out
    assert "which is recorded but not trained on this machine" in out
    assert "--only dense:0 --ignore-records" in out
    assert not (root / "runs" / "dense" / "seed0" / "summary.json").exists()
    assert "ε-sweep plot not drawn" in out and not (root / "fig" / "eps_sweep.png").exists()
    with open(root / "out" / "r.csv", newline="") as f:  # the recorded row is in the table
        assert [(r["method"], r["autoattack_acc"]) for r in csv.DictReader(f)] == [
            ("dense", "0.3")]


def test_figure_title_names_the_dataset_and_the_test_images():
    """The Pareto figure's title says which data it shows (it once said Fashion-MNIST for all)."""
    from sstorch.experiments.manifest import load_manifest
    from sstorch.experiments.tables import figure_title

    root = Path(__file__).resolve().parents[2] / "configs"
    fmnist, cifar = load_manifest(root / "paper-fmnist"), load_manifest(root / "paper-cifar10")
    assert figure_title(fmnist, [{"eval_n": None}]) == (
        "Fashion-MNIST, L∞ attack radius of the runs, full test set")
    assert figure_title(cifar, [{"eval_n": 1000}]).startswith("CIFAR-10, ")
    assert figure_title(cifar, [{"eval_n": 1000}]).endswith("first 1,000 test images")
    assert "stated prefix" in figure_title(cifar, [{"eval_n": None}, {"eval_n": 1000}])
