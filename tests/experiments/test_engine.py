"""The sweep's local process pool (:class:`PoolEngine`): jobs in parallel, dependencies
respected, a failed or killed job reported while the others go on, and a real sweep through
``sstorch sweep --workers 2``.

The scheduling tests run a stand-in task (:func:`_stand_in`, in spawned workers) that writes
stamps instead of training, so they take seconds.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
from test_sweep import ROWS, _write_sweep

from sstorch.cli import main
from sstorch.experiments import schedule
from sstorch.experiments.engine import PoolEngine
from sstorch.experiments.manifest import Job, Manifest, jobs, load_manifest
from sstorch.experiments.schedule import Outcome, run_sweep


def _stamp(job: Job, what: str) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / what).write_text(json.dumps({"t": time.time(), "pid": os.getpid()}))


def _read(job: Job, what: str) -> dict:
    return json.loads((job.run_dir / what).read_text())


def _stand_in(stage: str, job: Job, m: Manifest, threads: int | None, cwd: str) -> Outcome:
    """A task that stamps its start and end; trains ``summary.json`` (so dependents may
    start), fails when the manifest's directory holds ``fail-<method><seed>`` (``exit``:
    the worker process dies). ``dense`` trainings meet: each waits for the other's start."""
    _stamp(job, f"{stage}.start")
    name = f"{job.method}{job.seed}"
    if (m.root / f"fail-{name}").is_file():
        if (m.root / f"fail-{name}").read_text() == "exit":
            os._exit(3)
        raise RuntimeError(f"{name} broke")
    if stage == "train" and job.method == "dense" and (m.root / "meet").is_file():
        other = job.run_dir.parent / f"seed{1 - job.seed}" / "train.start"
        deadline = time.time() + 60
        while not other.is_file():
            if time.time() > deadline:
                return Outcome("failed", "the other dense training never started")
            time.sleep(0.05)
    time.sleep(0.3)
    if stage == "train":
        (job.run_dir / "summary.json").write_text("{}")
    _stamp(job, f"{stage}.end")
    (job.run_dir / f"threads-{threads}").touch()
    return Outcome("done")


@pytest.fixture
def reports(monkeypatch):
    """Count report rebuilds (the stand-in runs write no results to report)."""
    calls: list[int] = []
    monkeypatch.setattr(schedule, "write_report", lambda m, log: calls.append(1))
    return calls


def test_a_pool_runs_jobs_at_once_and_a_dependent_waits_for_its_parent(tmp_path, reports):
    rows = [{"method": "dense", "seeds": [0, 1]},
            {"method": "sep", "seeds": [0], "init_from": "dense"}]
    m = load_manifest(_write_sweep(tmp_path, rows))
    (tmp_path / "meet").touch()
    dense0, sep0, dense1 = jobs(m)
    before = os.environ.get("OMP_NUM_THREADS")
    pool = PoolEngine(2, threads=1)
    try:
        assert run_sweep(m, pool, only=None, threads=1, task=_stand_in) == 0
    finally:
        pool.close()
    assert os.environ.get("OMP_NUM_THREADS") == before  # set for the workers only
    # both dense trainings ran at once (each waited for the other), in two processes
    assert _read(dense0, "train.start")["pid"] != _read(dense1, "train.start")["pid"]
    # sep starts from dense seed 0: its training began after that training ended
    assert _read(sep0, "train.start")["t"] >= _read(dense0, "train.end")["t"]
    for job in (dense0, sep0, dense1):  # evaluated after its own training
        assert _read(job, "evaluate.start")["t"] >= _read(job, "train.end")["t"]
        assert (job.run_dir / "threads-1").is_file()
    assert len(reports) == 3  # the report is rebuilt after every finished job


def test_a_failed_job_is_reported_and_the_others_go_on(tmp_path, reports, capsys):
    rows = [{"method": "dense", "seeds": [0, 1]},
            {"method": "sep", "seeds": [0], "init_from": "dense"}]
    m = load_manifest(_write_sweep(tmp_path, rows))
    (tmp_path / "fail-dense0").write_text("raise")
    dense0, sep0, dense1 = jobs(m)
    pool = PoolEngine(2, threads=1)
    try:
        assert run_sweep(m, pool, threads=1, task=_stand_in) == 2  # dense 0 and its dependent
    finally:
        pool.close()
    out = capsys.readouterr().out
    assert "!! dense seed 0 failed: RuntimeError: dense0 broke" in out
    assert "!! sep seed 0 " in out and f"{dense0.run_dir} did not train" in out
    assert (dense0.run_dir / "sweep-error.txt").read_text() == "RuntimeError: dense0 broke\n"
    assert (dense1.run_dir / "evaluate.end").is_file() and not sep0.run_dir.exists()


def test_a_killed_worker_fails_its_job_and_a_fresh_pool_runs_the_rest(tmp_path, reports,
                                                                      capsys):
    m = load_manifest(_write_sweep(tmp_path, ROWS))  # dense 0, sep 0, dense 1
    (tmp_path / "fail-sep0").write_text("exit")
    dense0, sep0, dense1 = jobs(m)
    pool = PoolEngine(1, threads=1)
    try:
        assert run_sweep(m, pool, threads=1, task=_stand_in) == 1
    finally:
        pool.close()
    assert "!! sep seed 0 failed: BrokenProcessPool" in capsys.readouterr().out
    assert (sep0.run_dir / "sweep-error.txt").read_text().startswith("BrokenProcessPool")
    for job in (dense0, dense1):
        assert (job.run_dir / "evaluate.end").is_file()
    assert _read(dense1, "train.start")["pid"] != _read(dense0, "train.start")["pid"]


def test_sweep_on_a_pool_of_two_workers(tmp_path, capsys):
    """The real stages in spawned workers: ``sstorch sweep DIR --workers 2``."""
    root = _write_sweep(tmp_path / "s", ROWS, eval={"pgd_steps": 1, "n": 16})
    assert main(["sweep", str(root), "--workers", "2", "--threads", "1"]) == 0
    with open(root / "out" / "r.csv", newline="") as f:
        assert [(r["method"], r["seed"]) for r in csv.DictReader(f)] == [
            ("dense", "0"), ("dense", "1"), ("sep", "0")]
    for job in jobs(load_manifest(root)):
        assert job.evaluated and not (job.run_dir / "sweep-error.txt").exists()
    assert main(["sweep", str(root), "--workers", "2", "--threads", "1"]) == 0  # all done
    assert "== train" not in capsys.readouterr().out
    assert Path(root / "runs" / "dense" / "seed0" / ".lock").is_file()
