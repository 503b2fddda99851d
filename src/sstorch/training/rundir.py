"""The run directory of ``sstorch train``: what it may hold, the fresh / resume / restart
checks (:func:`plan_run`, :func:`open_run_dir`), and its ``metrics.csv`` and TensorBoard
writers."""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sstorch.config import Config
from sstorch.io.checkpoint import CheckpointError, read_metadata
from sstorch.io.fsutil import (
    LOCK_NAME,
    atomic_write,
    atomic_write_text,
    fs_errors,
    is_temp_name,
    lock_dir,
    remove_stale_temps,
)


class RunDirError(ValueError):
    """The run directory cannot be trained into as asked (it holds another run, or its run
    cannot be resumed); the message says what to do."""


# What `sstorch train` and the commands after it write into a run directory: --overwrite
# deletes these (and temporary files), never anything else.
_RUN_FILES = ("config.yaml", "metrics.csv", "tb", "*.safetensors", "summary.json", "eval.json",
              "eval.md", "eval.journal.jsonl", "sweep.json", "*.onnx", "*.export.json")


# Entries that do not make a directory hold a run: the locks of train / eval and of the sweep,
# and the sweep's note of a failed attempt.
_NOT_A_RUN = frozenset({LOCK_NAME, ".lock", "sweep-error.txt"})


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of ``metrics.csv`` (none if absent); rows without a readable epoch
    (a line cut by a kill in a file written before writes were atomic) are dropped."""
    if not path.exists():
        return [], []
    with fs_errors(path), path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)

    def epoch_ok(r: dict[str, str]) -> bool:
        try:
            return int(r.get("epoch") or "") >= 1
        except ValueError:
            return False

    return header, [r for r in rows if epoch_ok(r)]


def _write_rows(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, header)
    w.writeheader()
    w.writerows(rows)
    text = buf.getvalue()
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def _write_csv(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to ``metrics.csv``: the whole file is rewritten atomically (it is small), so
    a kill never leaves half a row. New columns (e.g. resume with new layers) are appended."""
    header, rows = _read_rows(path)
    _write_rows(path, list(dict.fromkeys(header + list(row))), [*rows, row])


def _truncate_csv(path: Path, first_epoch: int) -> None:
    """Drop rows of epochs ≥ ``first_epoch`` (written before a crash, not in the checkpoint)."""
    if not path.exists():
        return
    header, rows = _read_rows(path)
    keep = [r for r in rows if int(r["epoch"]) < first_epoch]
    if len(keep) != len(rows) or not header:
        _write_rows(path, header or ["epoch"], keep)


def _tensorboard(run_dir: Path, first_epoch: int):
    """A TensorBoard writer for ``run_dir/tb`` (None without tensorboard); events of epochs
    ≥ ``first_epoch`` left by an interrupted run are purged."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    purge = first_epoch if first_epoch > 1 else None
    with fs_errors(run_dir / "tb"):
        return SummaryWriter(str(run_dir / "tb"), purge_step=purge)


def _run_entries(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds besides locks, the sweep's error note and temporary files."""
    with fs_errors(run_dir):
        return sorted(e for e in os.listdir(run_dir)
                      if e not in _NOT_A_RUN and not is_temp_name(e))


def _listed(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _check_fresh(run_dir: Path, overwrite: bool) -> list[str]:
    """The entries ``--overwrite`` will delete; RunDirError if ``run_dir`` holds a run and
    ``overwrite`` is off, or holds files that `sstorch train` does not write."""
    entries = _run_entries(run_dir)
    if entries and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run ({_listed(entries)}); continue it with `sstorch "
            f"train --resume {shlex.quote(str(run_dir))}`, replace it with --overwrite (deletes "
            "its files first), or choose another run name (--set name=...)")
    unknown = [e for e in entries
               if not any(fnmatch.fnmatchcase(e, pattern) for pattern in _RUN_FILES)]
    if unknown:
        raise RunDirError(
            f"--overwrite: {run_dir} holds files `sstorch train` does not write "
            f"({_listed(unknown)}); move them away or choose another run directory; nothing "
            "was deleted")
    return entries


def _delete(run_dir: Path, names: list[str]) -> None:
    """Delete ``names`` in ``run_dir`` (config.yaml last, so an interrupted delete still
    reads as a run)."""
    for name in sorted(names, key=lambda n: n == "config.yaml"):
        path = run_dir / name
        with fs_errors(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _restart_hint(run_dir: Path) -> str:
    """How to train ``run_dir`` again from epoch 1, and how to start a new run from its best
    weights (when it has them): commands that work as printed."""
    q = shlex.quote
    place = f"out_dir={q(str(run_dir.parent))} name={q(run_dir.name)}"
    hint = (f"start it again from epoch 1: sstorch train --config "
            f"{q(str(run_dir / 'config.yaml'))} --set {place} --overwrite")
    best = run_dir / "best.safetensors"
    if best.is_file():
        hint += (f"; or start a new run from its best weights: sstorch train --config "
                 f"{q(str(run_dir / 'config.yaml'))} --set out_dir={q(str(run_dir.parent))} "
                 f"name={q(run_dir.name + '-2')} init_from={q(str(best))}")
    return hint


def _check_restartable(run_dir: Path) -> None:
    """``--resume`` without ``last.safetensors``: fine (epoch 1 again) when the run was killed
    before its first checkpoint; RunDirError when it got further (its checkpoint is lost)."""
    last = run_dir / "last.safetensors"
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"cannot resume: {last} does not exist; pass the run directory of an "
                          "earlier `sstorch train`")
    reason = None
    if (run_dir / "summary.json").is_file():
        reason = "it has a summary.json: the run had finished"
    elif (run_dir / "best.safetensors").is_file():
        try:
            epoch = read_metadata(run_dir / "best.safetensors").get("epoch")
        except CheckpointError:
            epoch = None
        if epoch != 1:
            reason = f"its best.safetensors is from epoch {epoch}"
    if reason is not None:
        raise RunDirError(f"cannot resume: {last} does not exist but the run got past its "
                          f"first epoch ({reason}); {_restart_hint(run_dir)}")


@dataclass
class RunPlan:
    """Where a run lives and how it starts: fresh, resumed, or (``restart``) resumed but
    killed before its first checkpoint, so trained again from epoch 1."""

    run_dir: Path
    resume: bool
    overwrite: bool
    restart: bool = False
    locked: bool = False
    to_delete: list[str] = field(default_factory=list)  # a fresh run's --overwrite victims

    @property
    def last(self) -> Path:
        """The checkpoint a resumed run continues from."""
        return self.run_dir / "last.safetensors"

    def lock(self, stack: contextlib.ExitStack, log: Callable[[str], Any]) -> None:
        """Lock the directory for the rest of ``stack``, remove temporary files of
        interrupted writes and, for a fresh run, check that it may be written into."""
        stack.enter_context(lock_dir(self.run_dir, "sstorch train"))
        self.locked = True
        if removed := remove_stale_temps(self.run_dir):
            log(f"removed {len(removed)} temporary file(s) of interrupted writes in "
                f"{self.run_dir}: {_listed([p.name for p in removed])}")
        if not self.resume:
            self.to_delete = _check_fresh(self.run_dir, self.overwrite)


def plan_run(cfg: Config, resume: str | Path | None, overwrite: bool, main: bool,
             stack: contextlib.ExitStack, log: Callable[[str], Any]) -> RunPlan:
    """Check the run directory before the (slow) data loading; the main process locks it
    when it exists already. Nothing in it changes yet."""
    run_dir = Path(resume) if resume is not None else Path(cfg.out_dir) / cfg.name
    if resume is not None and not run_dir.is_dir():
        raise RunDirError(f"cannot resume: {run_dir} is not a directory; pass the run directory "
                          "of an earlier `sstorch train`")
    plan = RunPlan(run_dir, resume is not None, overwrite)
    if main and run_dir.is_dir():
        plan.lock(stack, log)
    plan.restart = plan.resume and not plan.last.is_file()  # killed before its 1st checkpoint
    if plan.restart:
        _check_restartable(run_dir)
    return plan


def open_run_dir(cfg: Config, plan: RunPlan, start_epoch: int, stack: contextlib.ExitStack,
                 log: Callable[[str], Any]) -> None:
    """Make the run directory ready for epoch ``start_epoch`` (main process only, once data,
    model and checkpoint are known to be valid): lock it, delete what ``--overwrite`` or a
    restart replaces, write ``config.yaml`` and cut ``metrics.csv`` back."""
    run_dir = plan.run_dir
    if not plan.locked:
        with fs_errors(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        plan.lock(stack, log)
    if plan.to_delete:
        _delete(run_dir, plan.to_delete)
        log(f"--overwrite: deleted the previous run's files in {run_dir} "
            f"({_listed(plan.to_delete)})")
    if plan.restart:  # what the killed first attempt wrote before its first checkpoint
        _delete(run_dir, [n for n in ("metrics.csv", "tb", "best.safetensors")
                          if (run_dir / n).exists()])
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    _truncate_csv(run_dir / "metrics.csv", start_epoch)
    if plan.restart:
        log(f"no checkpoint in {run_dir} yet (stopped during epoch 1): starting it again "
            "from epoch 1")
    elif plan.resume:
        log(f"resumed {run_dir} at epoch {start_epoch}")
