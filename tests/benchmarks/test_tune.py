"""benchmarks/tune.py: a grid of config values selected on the validation split."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
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
    import sstorch.training.loop

    base, out, table = tiny_config(tmp_path)
    real_train = sstorch.training.loop.train
    trained = []

    def train(cfg, resume=None, log=print, on_epoch=None):  # 0.02: wins at seed 0, nan at 2
        trained.append((cfg.optim.lr, cfg.seed))
        if cfg.seed == 2 and cfg.optim.lr == 0.02:
            raise sstorch.training.loop.TrainingDiverged("loss became nan at epoch 1; stopped")
        return real_train(cfg, resume=resume, log=log, on_epoch=on_epoch)

    monkeypatch.setattr(sstorch.training.loop, "train", train)
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


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_space_specs_are_parsed_and_bad_ones_refused():
    space = tune.parse_space(["optim.lr=log:1e-3:0.3", "prune.target=float:0:0.8",
                              "model.rank=int:1:8",
                              "model.hidden=cat:[[32,32],[32,32]]|[[16,16],[16,16]]|[[32,32]]"])
    assert [(q.key, q.kind, q.low, q.high) for q in space[:3]] == [
        ("optim.lr", "log", 1e-3, 0.3), ("prune.target", "float", 0.0, 0.8),
        ("model.rank", "int", 1, 8)]
    assert space[3].choices == ("[[32,32],[32,32]]", "[[16,16],[16,16]]", "[[32,32]]")
    assert space[2].grid_values() == list(range(1, 9)) and space[3].spec().startswith(
        "model.hidden=cat:[[32,32],[32,32]]|")
    for bad, why in [("optim.lr", "expected KEY=SPEC"), ("optim.lr=", "expected KEY=SPEC"),
                     ("optim.lr=0.1", "expected KEY=SPEC"), ("=log:1:2", "expected KEY=SPEC"),
                     ("optim.lr=exp:1:2", "expected KEY=SPEC"),
                     ("optim.lr=log:0:0.1", "log needs 0 < LO"),
                     ("optim.lr=float:0.2:0.1", "needs LO < HI"),
                     ("optim.lr=float:0.1", "two numbers"), ("optim.lr=float:a:b", "two numbers"),
                     ("model.rank=int:1:2.5", "two integers"),
                     ("model.hidden=cat:[[4,4]]||[[2,2]]", "an empty value"),
                     ("model.hidden=cat:[[4,4]|[[2,2]]", "is not YAML"),
                     ("model.rank=cat:1|1", "given twice")]:
        with pytest.raises(SystemExit, match=re.escape(why)):
            tune.parse_space([bad])
    with pytest.raises(SystemExit, match=r"names 'model\.rank' twice"):
        tune.parse_space(["model.rank=int:1:2", "model.rank=int:1:3"])
    with pytest.raises(SystemExit, match="enumerates int and cat"):
        tune.parse_space(["optim.lr=log:0.01:0.1"])[0].grid_values()
    base = ["base.yaml", "--out", "o", "--csv", "c.csv"]
    for args, why in [(["--space", "optim.lr=log:0.01:0.1"], "needs --trials N"),
                      (["--space", "optim.lr=log:0.01:0.1", "--trials", "2", "--shard", "0/2"],
                       "--shard splits a grid"),
                      (["--grid", "optim.lr=0.1", "--trials", "2"], "--trials is for a search"),
                      (["--grid", "optim.lr=0.1", "--space", "optim.lr=log:0.01:0.1"],
                       "given by both --grid and --space"),
                      (["--set", "optim.lr=0.1", "--space", "optim.lr=log:0.01:0.1"],
                       "given by both --set and --space")]:
        with pytest.raises(SystemExit, match=re.escape(why)):
            tune.main([*base, *args])


def test_a_space_search_persists_its_study_and_continues_it(tmp_path, capsys):
    import optuna

    base, out, table = tiny_config(tmp_path)
    plot = tmp_path / "search.png"
    args = [str(base), "--space", "optim.lr=log:0.003:0.03", "--space", "model.rank=int:1:2",
            "--out", str(out), "--csv", str(table), "--plot", str(plot)]
    assert tune.main([*args, "--trials", "2"]) == 0
    rows = rows_of(table)
    assert list(rows[0]) == ["trial", *tune.COLUMNS, "nnz"]
    assert [r["trial"] for r in rows] == ["0", "1"] and all(r["status"] == "ok" for r in rows)
    assert [r["selected"] for r in rows].count("True") == 1
    for r in rows:  # the point names the run; nnz is the trained model's
        assert (out / r["point"] / "summary.json").is_file()
        assert int(r["nnz"]) == json.loads((out / r["point"] / "summary.json").read_text())["nnz"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = {r["point"]: (out / r["point"] / "summary.json").stat().st_mtime_ns for r in rows}
    capsys.readouterr()
    assert tune.main([*args, "--trials", "3"]) == 0  # continues the study: one more trial
    text = capsys.readouterr().out
    assert text.count("== trial") == 1 and "== trial 2: " in text
    rows = rows_of(table)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {p: (out / p / "summary.json").stat().st_mtime_ns for p in first} == first
    study = optuna.load_study(study_name="runs", storage=f"sqlite:///{out}/study.db")
    assert len(study.trials) == 3 and study.best_value == max(
        float(r["val_robust_acc"]) for r in rows)
    before = table.read_bytes()
    assert tune.main([*args, "--trials", "3", "--report-only"]) == 0
    assert table.read_bytes() == before and "== trial" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="another search"):
        tune.main([a.replace("int:1:2", "int:1:3") for a in args] + ["--trials", "4"])
    with pytest.raises(SystemExit, match="another search"):  # another budget, too
        tune.main([*args, "--trials", "4", "--max-nnz", "1000"])


def test_a_pruned_trial_is_recorded_never_selected_and_not_retrained(tmp_path, capsys,
                                                                      monkeypatch):
    import optuna

    class PruneTrialOne(optuna.pruners.BasePruner):  # deterministic: trial 1 at its 1st epoch
        def prune(self, study, trial):
            return trial.number == 1

    monkeypatch.setattr(tune, "make_pruner", lambda optuna, kind: PruneTrialOne())
    base, out, table = tiny_config(tmp_path, epochs=2)
    args = [str(base), "--space", "optim.lr=log:0.003:0.03", "--trials", "2", "--out", str(out),
            "--csv", str(table)]
    assert tune.main(args) == 0
    pruned, ok = sorted(rows_of(table), key=lambda r: r["trial"] != "1")
    assert pruned["status"] == "pruned at epoch 1" and pruned["selected"] == "False"
    assert pruned["best_epoch"] == "1" and pruned["val_robust_acc"] != ""  # its one epoch
    assert ok["status"] == "ok" and ok["selected"] == "True" and ok["best_epoch"] == "2"
    run = out / pruned["point"]
    assert (run / tune.PRUNED).is_file() and not (run / "summary.json").exists()
    assert len(rows_of(run / "metrics.csv")) == 1  # stopped after epoch 1
    study = optuna.load_study(study_name="runs", storage=f"sqlite:///{out}/study.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert tune.select([{**pruned, "val_robust_acc": 1.0}, ok]) == 1  # even when it is best
    capsys.readouterr()
    assert tune.main(args) == 0 and "==" not in capsys.readouterr().out  # finished: 2 trials
    assert rows_of(table) == [ok, pruned] or rows_of(table) == [pruned, ok]


def test_an_interrupted_trial_resumes_from_its_last_checkpoint(tmp_path, capsys, monkeypatch):
    import sstorch.training.loop

    base, out, table = tiny_config(tmp_path, epochs=2)
    real_train = sstorch.training.loop.train
    calls = []

    def train(cfg, resume=None, log=print, on_epoch=None):
        calls.append(resume)

        def stop_after_epoch_1(epoch, row):
            on_epoch(epoch, row)
            if len(calls) == 1 and epoch == 1:
                raise KeyboardInterrupt  # Ctrl-C after the first epoch's checkpoint
        return real_train(cfg, resume=resume, log=log, on_epoch=stop_after_epoch_1)

    monkeypatch.setattr(sstorch.training.loop, "train", train)
    args = [str(base), "--space", "optim.lr=log:0.003:0.03", "--trials", "1", "--out", str(out),
            "--csv", str(table)]
    with pytest.raises(KeyboardInterrupt):
        tune.main(args)
    (point,) = [d for d in out.iterdir() if d.is_dir()]
    assert (point / "last.safetensors").is_file() and not (point / "summary.json").exists()
    assert tune.main([*args, "--report-only"]) == 0
    assert rows_of(table) == [] and "1 of 1 trials not finished" in capsys.readouterr().err
    assert tune.main(args) == 0  # the same point again, resumed at epoch 2
    assert calls == [None, point] and f"== trial 1: {point.name} (resumed)" in \
        capsys.readouterr().out
    (row,) = rows_of(table)
    assert row["point"] == point.name and row["status"] == "ok" and row["trial"] == "0"
    assert [r["epoch"] for r in rows_of(point / "metrics.csv")] == ["1", "2"]


def test_max_nnz_rejects_a_point_over_the_budget_without_training_it(tmp_path, capsys):
    from sstorch.config import load_config

    base, out, table = tiny_config(tmp_path)
    sets = ["--set", "prune.target=0.5", "--set", "prune.end_epoch=1"]  # counted after pruning
    nnz = {r: tune.count_nnz(load_config(base, ["prune.target=0.5", f"model.rank={r}"]))
           for r in (1, 3)}
    assert nnz[1] < nnz[3]
    budget = (nnz[1] + nnz[3]) // 2
    args = [str(base), "--grid", "model.rank=1,3", *sets, "--max-nnz", str(budget),
            "--out", str(out), "--csv", str(table)]
    assert tune.main(args) == 0
    assert "== rank=3" not in capsys.readouterr().out and not (out / "rank=3").exists()
    ok, over = rows_of(table)
    assert list(ok) == [*tune.COLUMNS, "nnz"]
    assert over["status"] == f"over budget (nnz {nnz[3]} > {budget})"
    assert over["selected"] == "False" and over["val_robust_acc"] == ""
    # the count before training is the one sstorch reports after it
    summary = json.loads((out / "rank=1" / "summary.json").read_text())
    assert int(ok["nnz"]) == nnz[1] == summary["nnz"] and ok["selected"] == "True"
    assert (out / "study.db").is_file()
    assert tune.main([*args, "--max-nnz", str(nnz[1] - 1), "--report-only"]) == 0
    assert rows_of(table)[0]["status"] == f"over budget (nnz {nnz[1]} > {nnz[1] - 1})"
    assert [r["selected"] for r in rows_of(table)] == ["False", "False"]


def test_plot_draws_accuracy_per_trial_and_against_nnz(tmp_path):
    rows = [{"trial": 0, "point": "a", "val_robust_acc": 0.5, "status": "ok", "nnz": 100,
             "selected": False},
            {"trial": 1, "point": "b", "val_robust_acc": 0.6, "status": "ok", "nnz": 300,
             "selected": True},
            {"trial": 2, "point": "c", "val_robust_acc": 0.4, "status": "pruned at epoch 2",
             "nnz": 200, "selected": False},
            {"trial": 4, "point": "d", "val_robust_acc": "", "status": "over budget (nnz 900 > "
             "500)", "nnz": 900, "selected": False}]
    path = tmp_path / "fig" / "search.png"
    tune.plot(rows, path, 500, True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tune.plot([{k: v for k, v in r.items() if k not in ("nnz", "trial")} for r in rows],
              tmp_path / "grid.png", None, False)
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_without_optuna_a_search_says_how_to_install_it(tmp_path, monkeypatch):
    base, out, table = tiny_config(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna → ImportError
    with pytest.raises(SystemExit, match=r"needs Optuna: pip install 'sstorch\[bench\]'"):
        tune.main([str(base), "--space", "optim.lr=log:0.01:0.1", "--trials", "1", "--out",
                   str(out), "--csv", str(table)])
    # rebuilding a grid's CSV does not need it
    assert tune.main([str(base), "--grid", "optim.lr=0.1", "--out", str(out), "--csv",
                      str(table), "--report-only"]) == 0


def test_enqueued_designs_train_first_and_only_once(tmp_path, capsys):
    """``--enqueue`` puts a known design (e.g. the experiment's row) at the head of a search;
    a continued search does not queue it again; a bad design is refused with its key."""
    base, out, table = tiny_config(tmp_path)
    args = [str(base), "--space", "optim.lr=log:0.003:0.03", "--space", "model.rank=int:1:2",
            "--enqueue", "optim.lr=0.01;model.rank=2", "--out", str(out), "--csv", str(table)]
    assert tune.main([*args, "--trials", "1"]) == 0
    out_text = capsys.readouterr().out
    assert "queued 1 design(s)" in out_text
    rows = rows_of(table)
    assert [r["trial"] for r in rows] == ["0"] and rows[0]["point"] == "lr=0.01,rank=2"
    assert tune.main([*args, "--trials", "2"]) == 0
    out_text = capsys.readouterr().out
    assert "design(s) from --enqueue" not in out_text and out_text.count("== trial") == 1
    assert next(r["point"] for r in rows_of(table)) == "lr=0.01,rank=2"
    for bad, why in [("optim.lr=0.5;model.rank=1", "outside"),
                     ("optim.lr=0.01", "missing"), ("optim.lr=0.01;model.rank=1;x=1", "not in"),
                     ("optim.lr", "KEY=VALUE")]:
        with pytest.raises(SystemExit, match=why):
            tune.main([*args[:5], "--enqueue", bad, "--out", str(tmp_path / "o2"),
                       "--csv", str(tmp_path / "t2.csv"), "--trials", "1"])
    with pytest.raises(SystemExit, match="--enqueue queues designs of a --space search"):
        tune.main([str(base), "--grid", "optim.lr=0.01", "--enqueue", "optim.lr=0.01",
                   "--out", str(out), "--csv", str(table)])
