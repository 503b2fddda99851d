"""Per-run lock files through which several ``sstorch sweep`` workers share one job queue.

A lock ``run_dir/.lock`` holds ``"<pid> <boot id>"``; it is stale when that process is gone or
the machine has rebooted since (a new process may then have the same pid).
"""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (``kill(pid, 0)``; one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def boot_id() -> str:
    """This boot's id (Linux), so a lock from before a reboot never looks alive."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def held(run_dir: Path) -> bool:
    """Whether a live worker (this boot) holds ``run_dir/.lock``."""
    try:
        pid_text, _, boot = (run_dir / ".lock").read_text().strip().partition(" ")
        pid = int(pid_text or 0)
    except (OSError, ValueError):
        return False
    return bool(pid) and pid_alive(pid) and boot in ("", boot_id())


def try_lock(run_dir: Path) -> Path | None:
    """Create ``run_dir/.lock`` exclusively (taking over a dead worker's); None if held.

    The lock holds ``"<pid> <boot id>"``; it is stale when that process is gone or the machine
    has rebooted since (a new process may then have the same pid).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if held(run_dir):
                return None
            lock.unlink(missing_ok=True)  # stale: its worker died
            continue
        os.write(fd, f"{os.getpid()} {boot_id()}".strip().encode())
        os.close(fd)
        return lock
    return None
