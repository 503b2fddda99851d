"""Keys of the results ``sstorch train`` writes into ``summary.json``."""

from __future__ import annotations

import re

__all__ = ["parse_pgd_key", "pgd_key"]

_PGD_KEY = re.compile(r"test_pgd(\d+)_acc")


def pgd_key(steps: int) -> str:
    """The ``summary.json`` key of the test robust accuracy under PGD with ``steps`` steps:
    ``test_pgd{steps}_acc``."""
    return f"test_pgd{steps}_acc"


def parse_pgd_key(key: str) -> int | None:
    """The PGD step count of a :func:`pgd_key` key, or None for any other key."""
    m = _PGD_KEY.fullmatch(key)
    return int(m.group(1)) if m else None
