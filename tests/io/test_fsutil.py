"""Tests of :mod:`sstorch.io.fsutil`: atomic writes, durable appends, the run lock, path expansion
and the one-line messages for file-system errors."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sstorch.io import fsutil
from sstorch.io.fsutil import (
    DirectoryBusy,
    FileSystemError,
    append_line,
    atomic_write_text,
    describe,
    expand_path,
    is_temp_name,
    lock_dir,
    remove_stale_temps,
)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(("err", "words"), [
    (errno.ENOSPC, ["no space left", "free some space"]),
    (errno.EROFS, ["read-only", "writable"]),
    (errno.EACCES, ["permission denied", "permissions"]),
    (errno.EEXIST, ["already exists", "remove it"]),
    (errno.EISDIR, ["is a directory", "file path"]),
])
def test_describe_names_the_path_what_and_what_to_do(err, words):
    text = describe(OSError(err, os.strerror(err), "/x/y"))
    assert text.startswith("/x/y: ") and " — " in text and "\n" not in text
    for w in words:
        assert w in text
    assert describe(OSError(err, os.strerror(err)), "given/path").startswith("given/path: ")


def test_expand_path_expands_home_and_variables(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("SSTORCH_TEST_DATA", "/data")
    assert expand_path("~/d") == "/home/someone/d"
    assert expand_path("$SSTORCH_TEST_DATA/x") == "/data/x"
    assert expand_path("${SSTORCH_TEST_DATA}/x") == "/data/x"
    monkeypatch.delenv("SSTORCH_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"--out=.*SSTORCH_TEST_UNSET is not set"):
        expand_path("$SSTORCH_TEST_UNSET/x", "--out")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "one")
    path.chmod(0o640)
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its permissions
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(FileSystemError) as info:
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert str(info.value).startswith(f"{path}: no space left on the device — ")
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_into_a_directory_path_or_missing_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(FileSystemError, match=r"d: is a directory — give a file path"):
        atomic_write_text(tmp_path / "d", "x")
    missing = tmp_path / "nope" / "a.json"
    with pytest.raises(FileSystemError, match=r"nope/a.json: no such file or directory"):
        atomic_write_text(missing, "x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; the "
                    "injected EROFS test below covers the message")
def test_atomic_write_into_a_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(FileSystemError, match="permission denied"):
            atomic_write_text(tmp_path / "a.json", "x")
    finally:
        tmp_path.chmod(0o700)


def test_atomic_write_on_a_read_only_file_system(tmp_path, monkeypatch):
    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".a.json.x.tmp"))

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", erofs)
    with pytest.raises(FileSystemError) as info:
        atomic_write_text(tmp_path / "a.json", "x")
    # the message names the file the user asked for, not the temporary name
    assert str(info.value).startswith(f"{tmp_path / 'a.json'}: the file system is read-only")


def test_temp_names_are_recognised_and_removed(tmp_path):
    temps = [".tmp-ab12cd.safetensors", ".tmpAb3De9", ".last.safetensors.k2_x9abc.tmp",
             "metrics.csv.tmp", "eval.json.tmp", ".config.yaml.abcdefgh.tmp"]
    keep = ["last.safetensors", ".keep", "tmp", ".tmp", "notes.tmp.txt", ".sstorch.lock",
            "metrics.csv"]
    for name in temps + keep:
        (tmp_path / name).write_text("x")
    assert all(is_temp_name(n) for n in temps)
    assert not any(is_temp_name(n) for n in keep)
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(temps)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# --------------------------------------------------------------------------- appends


def test_append_line_starts_on_a_new_line(tmp_path):
    path = tmp_path / "j.jsonl"
    append_line(path, '{"a": 1}')
    with open(path, "a") as f:
        f.write('{"cut": ')  # a line torn by a kill
    append_line(path, '{"b": 2}')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"cut": ', '{"b": 2}']


def test_append_line_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "j.jsonl"
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(FileSystemError, match=f"{path}: no space left"):
        append_line(path, '{"a": 1}')
    assert not path.exists()  # created by the failed append: removed, not left empty
    monkeypatch.undo()
    append_line(path, '{"a": 1}')
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(FileSystemError):
        append_line(path, '{"b": 2}')
    assert path.read_text() == '{"a": 1}\n'  # no partial line


# --------------------------------------------------------------------------- locking


def test_lock_is_exclusive_and_released(tmp_path):
    with lock_dir(tmp_path, "sstorch train"):
        with pytest.raises(DirectoryBusy, match=r"in use by another process \(sstorch train, "
                           rf"pid {os.getpid()}\)"):
            with lock_dir(tmp_path, "sstorch eval"):
                pass
    with lock_dir(tmp_path, "sstorch eval"):  # released at the end of the block
        pass


def test_lock_of_a_killed_process_is_released(tmp_path):
    """The lock is the kernel's: SIGKILL of its holder frees it, no stale lock file."""
    code = ("import sys, time; from sstorch.io.fsutil import lock_dir\n"
            "with lock_dir(sys.argv[1], 'holder'):\n"
            "    print('locked', flush=True); time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(fsutil.__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryBusy, match=rf"holder, pid {proc.pid}"):
            with lock_dir(tmp_path, "test"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with lock_dir(tmp_path, "test"):
        pass


def test_lock_in_a_read_only_directory_is_a_file_system_error(tmp_path, monkeypatch):
    real_open = os.open

    def erofs(path, *args, **kwargs):
        if str(path).endswith(fsutil.LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", erofs)
    with pytest.raises(FileSystemError, match="the file system is read-only"):
        with lock_dir(tmp_path, "test"):
            pass
