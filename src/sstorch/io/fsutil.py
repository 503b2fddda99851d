"""File-system helpers shared by every command: atomic writes, durable appends, run locks,
path expansion and one-line messages for file-system errors.

* :func:`atomic_write` (and :func:`atomic_write_text`): write beside the target under a
  temporary name, fsync, ``os.replace`` onto the target, fsync the directory. A failure or a
  kill at any moment leaves the previous file (if any) untouched; the temporary file is removed
  on failure, and :func:`remove_stale_temps` removes what a kill left behind.
* :func:`append_line`: append one line and fsync it; the line always starts on a new line, and
  a failed append leaves the file as it was.
* :func:`lock_dir`: an exclusive ``fcntl.flock`` on ``<dir>/.sstorch.lock``, released by the
  operating system when the process ends, however it ends.
* :class:`FileSystemError`: an ``OSError`` whose message is one line,
  ``<path>: <what went wrong> — <what to do>`` (:func:`describe`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "LOCK_NAME", "DirectoryBusy", "FileSystemError", "append_line", "atomic_write",
    "atomic_write_text", "describe", "expand_path", "fs_errors", "is_temp_name", "lock_dir",
    "remove_stale_temps", "temp_beside",
]

LOCK_NAME = ".sstorch.lock"

# errno → (what went wrong, what to do)
_ADVICE: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device",
                   "free some space or choose a directory on another disk, then run the "
                   "command again"),
    errno.EDQUOT: ("disk quota exceeded",
                   "free some space or choose a directory on another disk, then run the "
                   "command again"),
    errno.EROFS: ("the file system is read-only",
                  "choose a directory on a writable file system"),
    errno.EACCES: ("permission denied",
                   "check the permissions of the path and its directory, or choose a "
                   "directory you can write to"),
    errno.EPERM: ("operation not permitted",
                  "check the permissions of the path and its directory, or choose a "
                  "directory you can write to"),
    errno.EEXIST: ("a file of that name already exists",
                   "remove it or choose another path"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory",
                    "give a directory path (or remove the file in the way)"),
    errno.EISDIR: ("is a directory", "give a file path"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
    errno.EIO: ("input/output error", "check the disk (dmesg), then run the command again"),
}


class FileSystemError(OSError):
    """A file-system operation failed; ``str()`` is one line naming the path and what to do."""

    def __init__(self, err: int | None, message: str, path: str | os.PathLike | None = None):
        super().__init__(err, message, None if path is None else str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


class DirectoryBusy(ValueError):
    """Another process holds the directory's lock (:func:`lock_dir`)."""


def describe(exc: OSError, path: str | os.PathLike | None = None, todo: str | None = None
             ) -> str:
    """``"<path>: <what> — <what to do>"`` for an ``OSError``; ``path`` (the file the caller
    works on) else the error's own file name."""
    if isinstance(exc, FileSystemError):
        return exc.message
    where = path if path is not None else exc.filename
    what, advice = _ADVICE.get(exc.errno or -1, (None, "check the path and the file system"))
    if what is None:
        what = (exc.strerror or str(exc) or type(exc).__name__).strip()
        what = what[:1].lower() + what[1:]
    prefix = f"{os.fsdecode(where)}: " if where is not None else ""
    return f"{prefix}{what} — {todo or advice}"


def fs_error(exc: OSError, path: str | os.PathLike | None = None, todo: str | None = None
             ) -> FileSystemError:
    """``exc`` as a :class:`FileSystemError` (:func:`describe`)."""
    if isinstance(exc, FileSystemError):
        return exc
    where = path if path is not None else exc.filename
    return FileSystemError(exc.errno, describe(exc, path, todo), where)


@contextlib.contextmanager
def fs_errors(path: str | os.PathLike, todo: str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a :class:`FileSystemError` naming
    ``path``."""
    try:
        yield
    except OSError as exc:
        raise fs_error(exc, path, todo) from exc


def expand_path(value: str | os.PathLike, what: str = "path") -> str:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded; ``ValueError`` naming ``what`` for a variable
    that is not set."""
    text = os.path.expandvars(os.path.expanduser(os.fspath(value)))
    if m := re.search(r"\$(\{\w+\}|\w+)", text):
        name = m.group(1).strip("{}")
        raise ValueError(f"{what}={os.fspath(value)!r}: environment variable {name} is not set; "
                         "set it or write the path out")
    return text


# --------------------------------------------------------------------------- writing

# Names of temporary files: ours (``.<name>.<random>.tmp`` and the checkpoint writer's older
# ``.tmp-<random>.safetensors``) and the one safetensors' own writer renames into place
# (``.tmp`` + 6 random letters and digits).
_TEMP_NAMES = re.compile(r"^(\..+\.[A-Za-z0-9_]{8}\.tmp|\.tmp-.*\.safetensors|\.tmp[A-Za-z0-9]{6}"
                         r"|.+\.(csv|json)\.tmp)$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of an interrupted write (see :func:`atomic_write`)."""
    return bool(_TEMP_NAMES.match(name))


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files interrupted writes left in ``directory``; return them.

    Call it only while no other process writes there (under :func:`lock_dir`).
    """
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def temp_beside(path: Path) -> Iterator[Path]:
    """A temporary file next to ``path`` (same file system, so ``os.replace`` is atomic), with
    the permissions of a new file; removed on exit unless it was renamed onto ``path``."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp's 0600 would survive the rename
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None],
                 todo: str | None = None) -> None:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file beside it,
    which is fsynced and renamed onto ``path`` (an existing file keeps its permissions).

    Raises:
        FileSystemError: the directory is missing or not writable, the disk is full, ``path``
            is a directory, … (one line naming the path). Nothing is left behind, and an
            existing ``path`` is unchanged.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        mode = path.stat().st_mode & 0o777 if path.exists() else None
        with temp_beside(path) as tmp:
            if mode is not None:
                tmp.chmod(mode)
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except OSError as exc:
        raise fs_error(exc, path, todo) from exc
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, todo: str | None = None) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), todo)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path`` and fsync.

    The line starts on a line of its own even if the file ends in a fragment (a write cut by a
    kill). If the append fails (disk full) the file is cut back to what it held, and removed
    if this call created it, so no partial line is left.

    Raises:
        FileSystemError: naming ``path``.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as exc:
        raise fs_error(exc, path) from exc
    size = 0
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise fs_error(exc, path) from exc
    os.close(fd)


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def hold_lock(lock: Path, what: str, busy: Callable[[str], str]) -> Iterator[Path]:
    """Hold ``fcntl.flock`` on the file ``lock`` (created if needed) for the block.

    ``what`` is written into the file so that a refused process can name the holder;
    ``busy(holder)`` is the message of the :class:`DirectoryBusy` raised when another process
    holds it. The operating system releases the lock when its holder exits or is killed. Without
    ``fcntl`` (Windows) this is a no-op.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield lock
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise fs_error(exc, lock) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise DirectoryBusy(busy(holder)) from None
        except OSError as exc:
            raise fs_error(exc, lock) from exc
        with contextlib.suppress(OSError):  # who holds it, for the message above
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what}, pid {os.getpid()}".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock


def lock_dir(directory: str | os.PathLike, what: str) -> contextlib.AbstractContextManager[Path]:
    """Hold an exclusive lock on ``directory`` (``<directory>/.sstorch.lock``) for the block.

    ``what`` (e.g. ``"sstorch train"``) is written into the lock file, so a refused process
    can say who holds it. The lock is ``fcntl.flock`` (:func:`hold_lock`): the operating system
    releases it when the holder exits or is killed, so a crash never leaves a stale lock.

    Raises:
        DirectoryBusy: another process holds the lock.
        FileSystemError: the lock file cannot be created (read-only directory, …).
    """
    return hold_lock(Path(directory) / LOCK_NAME, what, lambda holder: (
        f"{directory} is in use by another process ({holder}); wait for it to finish or stop "
        "it, then run the command again"))
