"""Which sweep task owns a run directory right now.

The queue itself is the engine's (:mod:`sstorch.experiments.engine`); these locks only make a
stage's *check, then act* atomic across processes and machines sharing ``out_dir``. A task
holds :func:`job_lock` (``fcntl.flock`` on ``run_dir/.lock``) from its check "is this stage
done?" to the stage's last file (``summary.json`` / ``sweep.json``); inside it, ``sstorch
train`` and ``sstorch eval`` take the run-dir lock :func:`sstorch.io.fsutil.lock_dir` as
always. Both are released by the operating system when their holder exits or is killed, so a
crash never leaves a stale lock (a ``.lock`` pid file of sstorch 0.1 is simply taken over).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sstorch.io.fsutil import LOCK_NAME, hold_lock

JOB_LOCK = ".lock"  # the name the 0.1 pid files had, so run-dir checks already ignore it


def job_lock(run_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """Hold ``run_dir/.lock`` exclusively for the block (creating ``run_dir``).

    Raises:
        DirectoryBusy: another process (another ``sstorch sweep``) holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    return hold_lock(run_dir / JOB_LOCK, "sstorch sweep",
                     lambda holder: f"{run_dir} is held by another process ({holder})")


def _holder(lock: Path) -> str:
    """What a lock file says about its holder (``"sstorch train, pid 12"``), or "unknown"."""
    try:
        return lock.read_text(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def held_by(run_dir: Path) -> str | None:
    """Who holds ``run_dir`` (its sweep lock or its train/eval lock), or None when nobody.

    Probes each lock with a non-blocking ``flock`` released at once; since ``flock`` belongs to
    an open file, a lock held by this very process through another open file counts as held.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    for name in (JOB_LOCK, LOCK_NAME):
        path = run_dir / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return None
