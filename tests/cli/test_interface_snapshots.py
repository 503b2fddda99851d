"""The user-facing interface stays as it was before the package was reshaped (issue 23): every
command's ``--help`` text and every config key with its default. The snapshots were written by
the flat-module code (commit 9d2e574); a deliberate interface change updates them in the same
commit, so the diff shows it (the model section's split into one class per architecture, with
``model.structure`` for ``separable`` + ``baseline``, did)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sstorch
from sstorch.config import MODEL_CONFIGS, Config

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
COMMANDS = ["main", "train", "eval", "export", "report", "sweep", "bench", "summary"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_is_unchanged(command, tmp_path):
    env = {**os.environ, "COLUMNS": "100",
           "PYTHONPATH": os.pathsep.join([str(Path(sstorch.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "sstorch"] + ([] if command == "main" else [command])
    out = subprocess.run([*args, "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = (SNAPSHOTS / "help" / f"{command}.txt").read_text()
    assert out.stdout + out.stderr == expected


def _defaults() -> dict:
    """The default config, and the defaults of every architecture's ``model`` section."""
    tree = {"config": dataclasses.asdict(Config())}
    tree |= {f"model:{name}": dataclasses.asdict(cls()) for name, cls in MODEL_CONFIGS.items()}
    return json.loads(json.dumps(tree, sort_keys=True, default=str))


def test_config_keys_and_defaults_are_unchanged():
    """A renamed or removed key must come with its migration (``sstorch.config.migrate_model``
    reads the model keys of before 2026-12-05), or every run record would turn stale
    (``config_drift``)."""
    assert _defaults() == json.loads((SNAPSHOTS / "config_defaults.json").read_text())
