"""Every command over file-system faults (issue 24): read-only directories, missing paths, a
full disk and an existing file as ``--out`` each give one line naming the path and what to do,
exit status 1 (2 for a bad option), no traceback and nothing half-written.

The tests run as root in CI, where ``chmod`` does not stop writes: the read-only file system
and the full disk are injected (``EROFS`` / ``ENOSPC`` from ``os.open``, ``os.mkdir`` and
``os.fsync`` for paths under a directory); a real ``chmod`` test runs for other users.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sstorch.cli import main
from sstorch.config import load_config
from sstorch.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL = ["--attacks", "clean,fgsm", "--n", "20", "--sanity-n", "10", "--square-n", "5",
        "--square-queries", "20", "--eps-sweep", "0,0.1"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)


def _sets(out_dir: Path, name: str) -> list[str]:
    return [f"out_dir={out_dir}", f"name={name}", "data.name=digits", "model.hidden=[[4,4]]",
            "device=cpu", "epochs=1", "data.train_subset=64", "data.val_size=32",
            "data.test_subset=32", "data.batch_size=64", "attack.eps=0.1",
            "attack.step_size=0.05", "attack.steps=2", "eval.pgd_steps=2",
            "eval.val_pgd_steps=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults")
    return train(load_config(None, _sets(out, "run")), log=lambda msg: None)


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _one_line(capsys, argv: list[str], code: int = 1) -> str:
    """Run the CLI; check the exit status, no traceback and one ``sstorch <cmd>: error:`` line
    (progress bars aside); return that line."""
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse
        got = exc.code
    assert got == code, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("sstorch")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sstorch {argv[0]}: error: "), lines[0]
    return lines[0]


def _under(root: Path) -> Callable[[object], bool]:
    root_text = str(root)
    return lambda path: os.fsdecode(path).startswith(root_text)


def _read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail with EROFS, as on a read-only mount."""
    inside = _under(root)
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def ro_open(path, flags, *args, **kwargs):
        if inside(path) and flags & writing:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


def _full_disk(monkeypatch, root: Path) -> None:
    """Data written under ``root`` cannot reach the disk: fsync fails with ENOSPC."""
    inside = _under(root)
    real_fsync = os.fsync

    def full(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if inside(path) and not os.path.isdir(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _no_temp(root: Path) -> None:
    left = [p.name for p in root.rglob("*") if (p.name.startswith(".") and
            p.name != ".sstorch.lock") or p.name.endswith(".tmp")]
    assert not left, left


# --------------------------------------------------------------------------- read-only


def test_train_into_a_read_only_directory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    _read_only(monkeypatch, out)
    line = _one_line(capsys, ["train", "--set", *_sets(out, "new")])
    assert f"{out / 'new'}: the file system is read-only — choose a directory" in line
    assert list(out.iterdir()) == []


def test_train_resume_in_a_read_only_run_directory(run_dir, capsys, monkeypatch):
    before = _files(run_dir)
    _read_only(monkeypatch, run_dir)
    line = _one_line(capsys, ["train", "--resume", str(run_dir), "--set", "epochs=2"])
    assert f"{run_dir}/" in line and "read-only" in line
    assert _files(run_dir) == before


def test_eval_export_report_over_a_read_only_run_directory(run_dir, capsys, monkeypatch):
    before = _files(run_dir)
    _read_only(monkeypatch, run_dir)
    line = _one_line(capsys, ["eval", str(run_dir), *EVAL])
    assert f"{run_dir}/" in line and "read-only" in line
    line = _one_line(capsys, ["export", str(run_dir), "--n", "10"])
    assert f"{run_dir / 'model.onnx'}: the file system is read-only" in line
    line = _one_line(capsys, ["report", str(run_dir), "--out", str(run_dir / "rep")])
    assert f"{run_dir / 'rep'}: the file system is read-only" in line
    assert _files(run_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; the "
                    "injected read-only tests above cover it")
def test_real_read_only_run_directory(run_dir, capsys):
    run_dir.chmod(0o555)
    try:
        for argv in (["train", "--resume", str(run_dir), "--set", "epochs=2"],
                     ["eval", str(run_dir), *EVAL], ["export", str(run_dir), "--n", "10"]):
            assert "permission denied" in _one_line(capsys, argv)
    finally:
        run_dir.chmod(0o755)


# --------------------------------------------------------------------------- full disk


def test_train_on_a_full_disk(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    _full_disk(monkeypatch, out)
    line = _one_line(capsys, ["train", "--set", *_sets(out, "full")])
    assert f"{out / 'full' / 'config.yaml'}: no space left on the device — free some space" \
        in line
    _no_temp(out)
    assert not (out / "full" / "config.yaml").exists()


def test_checkpoint_write_on_a_full_disk_then_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    real_fsync = os.fsync

    def full_for_checkpoints(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".safetensors." in \
                os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_for_checkpoints)
    line = _one_line(capsys, ["train", "--set", *_sets(out, "full")])
    assert "cannot save checkpoint" in line and str(out / "full") in line
    assert "no space left on the device" in line
    _no_temp(out)
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the run resumes
    assert main(["train", "--resume", str(out / "full")]) == 0


def test_eval_on_a_full_disk_leaves_no_journal(run_dir, capsys, monkeypatch):
    before = _files(run_dir)
    _full_disk(monkeypatch, run_dir)
    line = _one_line(capsys, ["eval", str(run_dir), *EVAL])
    assert f"{run_dir / 'eval.journal.jsonl'}: no space left on the device" in line
    assert not (run_dir / "eval.journal.jsonl").exists()  # not even an empty one
    after = _files(run_dir)
    after.pop(".sstorch.lock", None)
    before.pop(".sstorch.lock", None)
    assert after == before


def test_export_on_a_full_disk(run_dir, capsys, monkeypatch):
    import torch

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.onnx, "export", enospc)
    line = _one_line(capsys, ["export", str(run_dir), "--n", "10"])
    assert f"{run_dir / 'model.onnx'}: no space left on the device" in line
    assert not any(p.suffix in (".onnx", ".tmp") for p in run_dir.iterdir())


def test_report_on_a_full_disk(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rep"
    _full_disk(monkeypatch, out)
    line = _one_line(capsys, ["report", str(run_dir), "--out", str(out)])
    assert f"{out}/" in line and "no space left on the device" in line
    assert list(out.iterdir()) == []  # no half-written plot or temporary file


# --------------------------------------------------------------------------- --out is a file


def test_an_existing_file_as_out(run_dir, tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("mine")
    line = _one_line(capsys, ["eval", str(run_dir), *EVAL, "--out", str(file)])
    assert f"{file}: exists and is not a directory — give a directory for --out" in line
    line = _one_line(capsys, ["report", str(run_dir), "--out", str(file)])
    assert f"{file}: exists and is not a directory — give a directory for --out" in line
    line = _one_line(capsys, ["export", str(run_dir), "--out", str(tmp_path)])
    assert f"--out {tmp_path} is a directory" in line
    line = _one_line(capsys, ["train", "--set", *_sets(file, "x")])
    assert f"{file}" in line and "not a directory" in line
    assert file.read_text() == "mine"


# --------------------------------------------------------------------------- missing paths


@pytest.mark.parametrize("argv", [
    ["train", "--resume", "{missing}"],
    ["train", "--config", "{missing}/c.yaml"],
    ["eval", "{missing}"],
    ["export", "{missing}"],
    ["report", "{missing}"],
])
def test_missing_paths(tmp_path, capsys, argv):
    missing = tmp_path / "nowhere"
    argv = [a.replace("{missing}", str(missing)) for a in argv]
    assert str(missing) in _one_line(capsys, argv)


def test_summary_bad_option_is_a_usage_error(capsys):
    try:
        main(["summary", "--compression", "nan"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        pytest.fail("summary accepted --compression nan")
    err = capsys.readouterr().err
    assert "--compression must be a finite number ≥ 1" in err and "Traceback" not in err


# --------------------------------------------------------------------------- ~ and $VAR


def test_cli_paths_expand_home_and_variables(finished, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(finished, home / "run")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSTORCH_TEST_OUT", str(tmp_path / "outs"))
    (tmp_path / "outs").mkdir()
    assert main(["eval", "~/run", *EVAL, "--out", "$SSTORCH_TEST_OUT/ev"]) == 0
    assert (tmp_path / "outs" / "ev" / "eval.json").is_file()
    assert main(["report", "~/run", "--out", "${SSTORCH_TEST_OUT}/rep"]) == 0
    assert (tmp_path / "outs" / "rep" / "report.md").is_file()
    assert main(["export", "~/run", "--n", "10", "--out", "~/m.onnx"]) == 0
    assert (home / "m.onnx").is_file()
    assert main(["train", "--resume", "~/run", "--set", "epochs=2"]) == 0
    capsys.readouterr()
    assert main(["train", "--set", *_sets(Path("~/runs"), "b")]) == 0  # out_dir=~/runs
    assert (home / "runs" / "b" / "summary.json").is_file()
