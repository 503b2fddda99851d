"""benchmarks/tune.py: a grid of config values selected on the validation split."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tune", ROOT / "benchmarks" / "tune.py")
tune = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tune)


def tiny_config(tmp_path: Path, **changes: object) -> tuple[Path, Path, Path]:
    """A one-epoch digits config written to ``tmp_path``; returns (yaml, runs dir, csv)."""
    cfg = {"name": "t", "epochs": 1, "device": "cpu",
           "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
           "attack": {"name": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
           "optim": {"name": "adamw", "lr": 0.01, "schedule": "none"},
           "eval": {"pgd_steps": 2},
           "model": {"name": "mlp", "separable": True, "hidden": [[4, 4]]},
           "constraints": {"lambda_sparsity": 0.0, "lambda_cond": 0.0}, **changes}
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(cfg))
    return base, tmp_path / "runs", tmp_path / "tune.csv"


def test_grid_points_and_names():
    grid = tune.parse_grid(["constraints.lambda_cond=0,1e-4", "seed=3"])
    assert grid == [("constraints.lambda_cond", ["0", "1e-4"]), ("seed", ["3"])]
    pts = tune.points(grid)
    assert pts == [["constraints.lambda_cond=0", "seed=3"],
                   ["constraints.lambda_cond=1e-4", "seed=3"]]
    assert tune.point_name(pts[1]) == "lambda_cond=1e-4,seed=3"
    for bad in (["lambda"], ["a="], ["a=1", "a=2"]):
        with pytest.raises(SystemExit):
            tune.parse_grid(bad)


def test_best_row_is_the_highest_validation_robust_accuracy(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,val_clean_acc,val_robust_acc,epoch_seconds,kappa/a,kappa/b\n"
                    "1,0.5,0.30,2,10,10\n2,0.6,0.40,2,100,10\n3,0.7,0.35,2,10,1\n")
    assert tune.best_row(path)["epoch"] == "2"
    r = tune.result(tmp_path, "p")
    assert r["best_epoch"] == 2 and r["val_robust_acc"] == 0.40 and r["val_clean_acc"] == 0.6
    assert r["log10_kappa_sep"] == 3.0 and r["train_seconds"] == 6.0


def test_tune_trains_every_point_once_and_writes_the_csv(tmp_path, capsys):
    base, out, table = tiny_config(tmp_path)
    args = [str(base), "--grid", "constraints.lambda_cond=0,0.01", "--out", str(out),
            "--csv", str(table), "--set", "seed=1"]
    assert tune.main([*args, "--report-only"]) == 0 and not out.exists()
    assert "2 of 2 points not finished yet" in capsys.readouterr().err
    assert tune.main([*args, "--shard", "1/2"]) == 0  # only the second point
    assert (out / "lambda_cond=0.01" / "summary.json").is_file()
    assert not (out / "lambda_cond=0").exists()
    assert "1 of 2 points not finished yet" in capsys.readouterr().err
    assert tune.main(args) == 0
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["lambda_cond=0", "lambda_cond=0.01"]
    assert all(r["device"] == "CPU" and 0 <= float(r["val_robust_acc"]) <= 1 for r in rows)
    text = capsys.readouterr().out
    assert text.count("(selected)") >= 1 and "== lambda_cond=0.01" not in text  # not retrained
    saved = yaml.safe_load((out / "lambda_cond=0.01" / "config.yaml").read_text())
    assert saved["constraints"]["lambda_cond"] == 0.01 and saved["seed"] == 1


def test_select_takes_the_best_or_the_best_conditioned_point_within_a_tolerance():
    rows = [{"val_robust_acc": 0.640, "log10_kappa_sep": 13.6},
            {"val_robust_acc": 0.645, "log10_kappa_sep": 10.1},
            {"val_robust_acc": 0.643, "log10_kappa_sep": 6.7},
            {"val_robust_acc": 0.622, "log10_kappa_sep": 3.2}]
    assert tune.select(rows) == 1
    assert tune.select(rows, within=1.0) == 2  # 3.2 is 2.3 points below the best: excluded
    assert tune.select(rows, within=3.0) == 3
    assert tune.select([], 1.0) is None
    assert tune.select([{"val_robust_acc": 0.5, "log10_kappa_sep": ""}], 1.0) == 0
    unstable = [{**rows[1], "status": "diverged at seed 1: loss became nan"}, rows[2]]
    assert tune.select(unstable) == 1  # the best point cannot train every seed


def test_points_trained_with_another_config_are_refused(tmp_path):
    cfg = {"name": "t", "epochs": 1, "device": "cpu",
           "data": {"name": "digits", "batch_size": 64, "val_size": 0.1},
           "attack": {"name": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
           "model": {"name": "mlp", "separable": True, "hidden": [[4, 4]]}}
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "runs"
    point = out / "lambda_cond=0"
    point.mkdir(parents=True)
    old = {**cfg, "attack": {**cfg["attack"], "eps": 0.2}}  # trained under another base config
    (point / "config.yaml").write_text(yaml.safe_dump(old))
    args = [str(base), "--grid", "constraints.lambda_cond=0", "--out", str(out),
            "--csv", str(tmp_path / "t.csv")]
    for extra in ([], ["--report-only"]):
        with pytest.raises(SystemExit, match=r"lambda_cond=0: attack\.eps: 0\.2 → 0\.1"):
            tune.main([*args, *extra])
    assert not (point / "summary.json").exists()


def test_a_diverged_point_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    base, out, table = tiny_config(
        tmp_path, optim={"name": "sgd", "lr": 0.01, "schedule": "none"},
        model={"name": "mlp", "separable": False, "hidden": [8]})
    args = [str(base), "--grid", "optim.lr=1e30,0.01", "--out", str(out), "--csv", str(table)]
    assert tune.main(args) == 0
    text = capsys.readouterr()
    assert "lr=1e30: diverged (loss became" in text.out
    assert "points not finished" not in text.err  # a diverged point is finished
    assert (out / "lr=1e30" / tune.DIVERGED).is_file()
    assert (out / "lr=0.01" / "summary.json").is_file()
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"] for r in rows] == ["lr=1e30", "lr=0.01"]
    assert rows[0]["status"].startswith("diverged: loss became") and rows[0]["val_robust_acc"] == ""
    assert rows[0]["selected"] == "False" and rows[1]["selected"] == "True"
    assert rows[1]["status"] == "ok" and 0 <= float(rows[1]["val_robust_acc"]) <= 1
    assert tune.main(args) == 0  # neither point is trained again
    assert "==" not in capsys.readouterr().out
    assert tune.select([{"val_robust_acc": ""}]) is None


def test_check_seeds_pass_over_a_point_that_diverges_at_another_seed(tmp_path, capsys,
                                                                     monkeypatch):
    import sstorch.train

    base, out, table = tiny_config(tmp_path)
    real_train = sstorch.train.train
    trained = []

    def train(cfg, resume=None, log=print):  # lr 0.02 wins at seed 0, blows up at seed 2
        trained.append((cfg.optim.lr, cfg.seed))
        if cfg.seed == 2 and cfg.optim.lr == 0.02:
            raise sstorch.train.TrainingDiverged("loss became nan at epoch 1; stopped")
        return real_train(cfg, resume=resume, log=log)

    monkeypatch.setattr(sstorch.train, "train", train)
    monkeypatch.setattr(tune, "select", lambda rows, within=0.0: next(
        (i for i in sorted(range(len(rows)), key=lambda i: -float(rows[i]["point"][3:]))
         if rows[i]["val_robust_acc"] != "" and str(rows[i]["status"]).startswith("ok")), None))
    args = [str(base), "--grid", "optim.lr=0.01,0.02", "--set", "seed=0", "--out", str(out),
            "--csv", str(table), "--check-seeds", "1,2"]
    assert tune.main(args) == 0
    # the grid at seed 0, then 0.02 (selected first) at seeds 1 and 2, then 0.01 in its place
    assert trained == [(0.01, 0), (0.02, 0), (0.02, 1), (0.02, 2), (0.01, 1), (0.01, 2)]
    assert (out / "lr=0.02.seed2" / tune.DIVERGED).is_file()
    assert (out / "lr=0.01.seed2" / "summary.json").is_file()
    with open(table, newline="") as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    assert rows["lr=0.02"]["status"].startswith("diverged at seed 2: loss became nan")
    assert rows["lr=0.02"]["selected"] == "False" and rows["lr=0.02"]["val_robust_acc"] != ""
    assert rows["lr=0.01"]["status"] == "ok (trains at seeds 1, 2 too)"
    assert rows["lr=0.01"]["selected"] == "True"
    assert "diverged at seed 2" in capsys.readouterr().out
    trained.clear()
    assert tune.main(args) == 0 and tune.main([*args, "--report-only"]) == 0
    assert trained == []  # every check is on disk: nothing trains again
    with open(table, newline="") as f:
        assert [r["selected"] for r in csv.DictReader(f)] == ["True", "False"]
