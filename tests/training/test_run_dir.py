"""Run directories that cannot be corrupted (issue 24): a failed ``--resume`` changes nothing, one
process at a time, no fresh run over an old one, leftovers of interrupted writes removed, hints
that can be followed, a run killed before its first checkpoint resumes, Ctrl-C is one line.

Tiny digits runs as in ``test_train.py``; every CLI call goes through :func:`sstorch.cli.main`.
"""

from __future__ import annotations

import csv
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

import sstorch.training.loop as train_mod
import sstorch.training.records as records_mod
from sstorch.cli import main
from sstorch.config import load_config
from sstorch.io.checkpoint import load_weights, read_metadata
from sstorch.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = {"log": lambda msg: None}


def _sets(out_dir: Path, name: str = "run", **kw: object) -> list[str]:
    """``--set`` items of a tiny deterministic digits run ('__' for '.' in ``kw``)."""
    base = {
        "data.name": "digits", "model.hidden": "[[4,4]]", "device": "cpu",
        "out_dir": str(out_dir), "name": name, "epochs": 1, "deterministic": "true",
        "data.train_subset": 128, "data.val_size": 64, "data.test_subset": 64,
        "data.batch_size": 64, "data.eval_batch_size": 256,
        "attack.eps": 0.1, "attack.step_size": 0.05, "attack.steps": 2,
        "eval.pgd_steps": 2, "eval.val_pgd_steps": 2,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(out_dir: Path, name: str = "run", **kw: object):
    return load_config(None, _sets(out_dir, name, **kw))


def _epochs(run_dir: Path) -> list[str]:
    with (run_dir / "metrics.csv").open() as f:
        return [r["epoch"] for r in csv.DictReader(f)]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes (TensorBoard event files included)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file()}


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert sorted(wa) == sorted(wb)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _error_line(capsys, cmd: str = "train") -> str:
    """The one ``sstorch <cmd>:`` line of stderr (progress bars aside); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith(f"sstorch {cmd}:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 1-epoch run; tests copy it."""
    out = tmp_path_factory.mktemp("finished")
    return train(_cfg(out, "done"), **QUIET)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


# --------------------------------------------------------------------------- 1: failed resume


@pytest.mark.parametrize("how", ["set", "config"])
def test_a_failed_resume_changes_nothing_in_the_run_directory(finished, tmp_path, capsys, how):
    run_dir = _copy(finished, tmp_path)
    before = _snapshot(run_dir)
    if how == "set":
        args = ["--resume", str(run_dir), "--set", "model.hidden=[[16,16]]", "epochs=2"]
    else:
        other = tmp_path / "other.yaml"
        other.write_text((run_dir / "config.yaml").read_text().replace("- 4\n", "- 8\n"))
        assert load_config(other).model.hidden == [[8, 8]]
        args = ["--resume", str(run_dir), "--config", str(other), "--set", "epochs=2"]
    assert main(["train", *args]) == 1
    line = _error_line(capsys)
    assert _snapshot(run_dir) == before  # config.yaml included
    assert f"cannot resume {run_dir} with this config" in line and "does not match" in line
    # the run is still whole: eval reads it, and a plain resume continues it
    assert load_config(run_dir / "config.yaml").model.hidden == [[4, 4]]
    assert main(["train", "--resume", str(run_dir), "--set", "epochs=2"]) == 0
    assert _epochs(run_dir) == ["1", "2"]


# --------------------------------------------------------------------------- 2: lock, refusal


def test_fresh_train_into_a_run_directory_is_refused(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    before = _snapshot(run_dir)
    sets = _sets(tmp_path, run_dir.name, seed=7)
    assert main(["train", "--set", *sets]) == 1
    line = _error_line(capsys)
    assert f"{run_dir} already holds a run" in line
    assert "--resume" in line and "--overwrite" in line
    assert _snapshot(run_dir) == before


def test_overwrite_replaces_the_old_run(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    (run_dir / "eval.json").write_text("{}")  # derived from the old weights: deleted too
    assert main(["train", "--overwrite", "--set", *_sets(tmp_path, run_dir.name, seed=7,
                                                           epochs=2)]) == 0
    assert "deleted the previous run's files" in capsys.readouterr().out
    assert _epochs(run_dir) == ["1", "2"]  # no rows of the old run
    assert not (run_dir / "eval.json").exists()
    assert load_config(run_dir / "config.yaml").seed == 7
    assert read_metadata(run_dir / "last.safetensors")["config"]["seed"] == 7
    # files train does not write are never deleted: refused, nothing touched
    (run_dir / "notes.txt").write_text("mine")
    before = _snapshot(run_dir)
    assert main(["train", "--overwrite", "--set", *_sets(tmp_path, run_dir.name)]) == 1
    line = _error_line(capsys)
    assert "notes.txt" in line and "nothing was deleted" in line
    assert _snapshot(run_dir) == before


def test_a_run_directory_in_use_is_refused(finished, tmp_path, capsys):
    """A second process on the run directory (here: this one, holding the lock on another
    open file description, as a second `sstorch train` would) is refused before it writes."""
    import fcntl

    run_dir = _copy(finished, tmp_path)
    before = _snapshot(run_dir)
    fd = os.open(run_dir / ".sstorch.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)  # (the lock file of the run that made the directory is there)
        os.write(fd, b"sstorch train, pid 4242")
        assert main(["train", "--resume", str(run_dir), "--set", "epochs=2"]) == 1
        line = _error_line(capsys)
        assert f"{run_dir} is in use by another process (sstorch train, pid 4242)" in line
        assert main(["eval", str(run_dir), "--n", "10"]) == 1
        assert "is in use" in _error_line(capsys, "eval")
    finally:
        os.close(fd)
    after = _snapshot(run_dir)
    after.pop(".sstorch.lock", None)
    before.pop(".sstorch.lock", None)
    assert after == before


# --------------------------------------------------------------------------- 9: temp files


def test_resume_removes_temporary_files_of_interrupted_writes(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    size = (run_dir / "last.safetensors").stat().st_size
    leftovers = [".tmp-x1y2z3.safetensors", ".tmpAb12Cd", ".last.safetensors.k2_x9abc.tmp",
                 "metrics.csv.tmp"]
    for name in leftovers:  # what a kill inside a checkpoint / CSV write used to leave
        (run_dir / name).write_bytes(b"\0" * size)
    (run_dir / ".keep").write_text("not ours")
    assert main(["train", "--resume", str(run_dir), "--set", "epochs=2"]) == 0
    assert "removed 4 temporary file(s)" in capsys.readouterr().out
    assert not any((run_dir / n).exists() for n in leftovers)
    assert (run_dir / ".keep").is_file()


# --------------------------------------------------------------------------- 10: hints


def test_damaged_last_checkpoint_gives_commands_that_work(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    last = run_dir / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert main(["train", "--resume", str(run_dir)]) == 1
    line = _error_line(capsys)
    assert f"{last} is damaged" in line and "truncated or corrupted" in line
    assert "--resume" not in line.split("is damaged", 1)[1]  # not a resume from best
    commands = [c.strip() for c in line.split(": sstorch ")[1:]]
    assert len(commands) == 2  # start again; or a new run from the best weights
    again, from_best = ("sstorch " + c.split("; or ")[0] for c in commands)
    # the second suggestion: a new run (next to this one) that starts from best's weights
    argv = shlex.split(from_best)[1:]
    assert main(argv) == 0
    new_run = run_dir.parent / f"{run_dir.name}-2"
    assert "initialized from" in capsys.readouterr().out
    assert read_metadata(new_run / "last.safetensors")["epoch"] == 1
    # the first: the run again from epoch 1, in place
    assert main(shlex.split(again)[1:]) == 0
    assert read_metadata(last)["epoch"] == 1 and _epochs(run_dir) == ["1"]


def test_damaged_init_from_is_reported_as_damaged(finished, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    data = (finished / "best.safetensors").read_bytes()
    bad.write_bytes(data[:-64] + bytes(64))  # flipped tensor bytes: the checksum fails
    assert main(["train", "--set", *_sets(tmp_path, "init", init_from=bad)]) == 1
    line = _error_line(capsys)
    assert f"{bad} is damaged" in line and "SHA-256" in line
    assert "do not fit" not in line and "must match" not in line
    assert not (tmp_path / "init").exists()


# --------------------------------------------------------------------------- 11: first epoch


def _killed_in_epoch_1(monkeypatch, cfg) -> Path:
    """Train until the first checkpoint write, which is interrupted: metrics.csv has epoch 1's
    row, TensorBoard its events, and there is no last.safetensors."""
    real = records_mod.save_checkpoint

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(records_mod, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **QUIET)
    monkeypatch.setattr(records_mod, "save_checkpoint", real)
    run_dir = Path(cfg.out_dir) / cfg.name
    assert _epochs(run_dir) == ["1"] and not (run_dir / "last.safetensors").exists()
    return run_dir


def test_resume_of_a_run_killed_before_its_first_checkpoint(tmp_path, monkeypatch, capsys):
    straight = train(_cfg(tmp_path, "straight", epochs=2), **QUIET)
    run_dir = _killed_in_epoch_1(monkeypatch, _cfg(tmp_path, "killed", epochs=2))
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "starting it again from epoch 1" in capsys.readouterr().out
    assert _epochs(run_dir) == ["1", "2"]  # epoch 1's row of the killed attempt is gone
    _same_weights(straight / "last.safetensors", run_dir / "last.safetensors")
    _same_weights(straight / "best.safetensors", run_dir / "best.safetensors")


def test_fresh_run_over_a_killed_first_epoch_has_one_row_per_epoch(tmp_path, monkeypatch,
                                                                  capsys):
    run_dir = _killed_in_epoch_1(monkeypatch, _cfg(tmp_path, "killed"))
    assert main(["train", "--set", *_sets(tmp_path, "killed")]) == 1  # refused, as any run
    assert "already holds a run" in _error_line(capsys)
    assert main(["train", "--overwrite", "--set", *_sets(tmp_path, "killed")]) == 0
    assert _epochs(run_dir) == ["1"]


def test_resume_without_checkpoint_of_a_run_that_got_further_is_refused(finished, tmp_path,
                                                                        capsys):
    run_dir = _copy(finished, tmp_path)
    (run_dir / "last.safetensors").unlink()
    before = _snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir)]) == 1
    line = _error_line(capsys)
    assert "cannot resume" in line and str(run_dir / "last.safetensors") in line
    assert "summary.json" in line and "--overwrite" in line
    assert _snapshot(run_dir) == before


# --------------------------------------------------------------------------- 12: Ctrl-C


def test_ctrl_c_is_one_line_with_the_resume_command(tmp_path, monkeypatch, capsys):
    real = train_mod.training_loss
    calls = [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # in epoch 2 (2 steps per epoch): epoch 1 is checkpointed
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "training_loss", interrupted)
    try:
        code = main(["train", "--set", *_sets(tmp_path, "c", epochs=2)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C left the CLI as a KeyboardInterrupt (a traceback for the user)")
    assert code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("sstorch")]
    run_dir = tmp_path / "c"
    assert lines == [f"sstorch train: interrupted; resume with: sstorch train --resume {run_dir}"]
    monkeypatch.setattr(train_mod, "training_loss", real)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert _epochs(run_dir) == ["1", "2"]


# --------------------------------------------------------------------------- 5: constraints


def test_dense_model_with_constraint_weights_names_the_keys(tmp_path, capsys):
    assert main(["train", "--set", *_sets(tmp_path, "dense", model__structure="dense")]) == 1
    line = _error_line(capsys)
    assert "constraints.lambda_sparsity=0" in line and "constraints.lambda_cond=0" in line
    assert "sstorch.separate" not in line
    assert not (tmp_path / "dense").exists()
