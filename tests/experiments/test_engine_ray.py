"""The Ray engine on a local Ray instance (two CPUs, no dashboard): ``sstorch sweep DIR --ray``
trains and evaluates every job as Ray tasks, a dependent after its parent. Skipped when Ray is
not installed (``pip install 'sstorch[ray]'``)."""

from __future__ import annotations

import csv
import os

import pytest
import yaml
from test_sweep import _write_sweep

from sstorch.cli import main
from sstorch.experiments.manifest import jobs, load_manifest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'sstorch[ray]'), "
                          "so the Ray engine of sstorch sweep is not tested")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of two CPUs, shut down after the test."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_sweep_on_a_local_ray_instance(local_ray, tmp_path, capsys):
    rows = [{"method": "dense", "seeds": [0, 1]},
            {"method": "sep", "seeds": [0], "init_from": "dense"}]
    root = _write_sweep(tmp_path / "s", rows, eval={"pgd_steps": 1, "n": 16})
    assert main(["sweep", str(root), "--ray", "auto", "--threads", "1"]) == 0
    with open(root / "out" / "r.csv", newline="") as f:
        assert [(r["method"], r["seed"]) for r in csv.DictReader(f)] == [
            ("dense", "0"), ("dense", "1"), ("sep", "0")]
    m = load_manifest(root)
    for job in jobs(m):
        assert job.evaluated and not (job.run_dir / "sweep-error.txt").exists()
        holder = (job.run_dir / ".lock").read_text()  # the last task that held the run: a
        assert holder.startswith("sstorch sweep, pid ")  # Ray worker, not this process
        assert holder != f"sstorch sweep, pid {os.getpid()}"
    sep = m.out_dir / "sep" / "seed0"
    saved = yaml.safe_load((sep / "config.yaml").read_text())
    assert saved["init_from"] == str(m.out_dir / "dense" / "seed0")
    capsys.readouterr()
    assert main(["sweep", str(root), "--ray", "auto", "--threads", "1"]) == 0  # all done
    assert "== train" not in capsys.readouterr().out


def test_ray_needs_out_dir_on_a_file_system_its_tasks_see(local_ray, tmp_path, monkeypatch):
    from sstorch.experiments import engine

    root = _write_sweep(tmp_path / "s", [{"method": "dense", "seeds": [0]}])
    monkeypatch.setattr(engine, "_probe", lambda path: False)  # a node without the mount
    with pytest.raises(RuntimeError, match="out_dir must be on a file system every node"):
        main(["sweep", str(root), "--ray", "auto"])
