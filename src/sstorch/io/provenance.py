"""Provenance recorded in result files: the code version, the machine, the CPU model."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["code_version", "cpu_model", "machine_description"]


def cpu_model() -> str | None:
    """The CPU model (the first ``model name`` line of ``/proc/cpuinfo``), or None off Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_description(device: torch.device) -> str:
    """``"<CPU model or GPU name>; <OS> <kernel>; torch <version>"`` for result files."""
    what = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {cpu_model() or platform.machine()} ({os.cpu_count()} cores), torch "
                 f"threads {torch.get_num_threads()}")
    return f"{what}; {platform.system()} {platform.release()}; torch {torch.__version__}"


def code_version() -> str:
    """``"sstorch <version>"``, plus ``(git <commit>[+dirty])`` when the package is a checkout.

    ``+dirty`` means files of the package differ from that commit. Recorded in result files so a
    number can be traced to the code that produced it.
    """
    from sstorch import __version__

    here = Path(__file__).resolve().parents[1]  # the package
    text = f"sstorch {__version__}"
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text} (git {sha}{'+dirty' if dirty else ''})"
