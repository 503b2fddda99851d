"""The sweep's scheduler: which task runs when, on whatever engine (:mod:`.engine`).

Each (method, seed) job is two tasks: ``train`` and ``evaluate``. A job's ``evaluate`` waits
for its ``train``; a job's ``train`` waits for the ``train`` of the runs it starts from
(``init_from``) or is distilled from (``teacher``), not for their evaluations. Ready tasks are
submitted in job order (seed-major, a job's evaluation before the next job's training), at
most ``engine.workers`` at a time, so one worker does the work in the order of
:func:`~sstorch.experiments.manifest.jobs`.

The scheduler runs in the driver (the ``sstorch sweep`` process) and is the only writer of
``sweep-error.txt`` and of the report, rebuilt after every finished job. A task returns an
:class:`Outcome` instead of raising (exceptions such as ``CheckpointCorrupted`` do not pickle
across processes). A run directory held by another process (a second ``sstorch sweep`` on
the same directory, or a ``sstorch train``) is never entered: its task waits and is retried
every 30 s until that process is done, after which it finds the stage finished and skips it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sstorch.config import drift_text
from sstorch.experiments.engine import BrokenProcessPool
from sstorch.experiments.locks import held_by, job_lock
from sstorch.experiments.manifest import Job, Manifest, jobs, selected
from sstorch.experiments.records import load_record
from sstorch.experiments.stages import config_drift, evaluate_stage, train_stage
from sstorch.experiments.tables import write_report
from sstorch.io.fsutil import DirectoryBusy

RETRY_SECONDS = 30  # how often a run held by another process is looked at again
STAGES = ("train", "evaluate")


def pause(seconds: float) -> None:
    """Sleep between looks at runs another process holds (tests replace it)."""
    time.sleep(seconds)


class Engine(Protocol):
    """What the scheduler needs of an engine (:mod:`sstorch.experiments.engine`)."""

    workers: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future: ...

    def restart(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What a task did: ``done``, ``skipped`` (already done), ``held`` (another process holds
    the run directory: retry later) or ``failed``; ``message`` says why."""

    state: str
    message: str = ""


@dataclass
class Task:
    """One stage (``train`` or ``evaluate``) of the ``index``-th job to run."""

    stage: str
    job: Job
    index: int

    @property
    def order(self) -> tuple[int, int]:
        return self.index, STAGES.index(self.stage)

    @property
    def name(self) -> str:
        return f"{self.stage} {self.job.method} seed {self.job.seed}"


def run_task(stage: str, job: Job, m: Manifest, threads: int | None = None,
             cwd: str | None = None) -> Outcome:
    """Run one stage of ``job`` under its :func:`~sstorch.experiments.locks.job_lock`, unless
    done already; never raises. In a worker, ``cwd`` (the driver's working directory, where
    the manifest's relative paths start) is entered and torch gets ``threads`` threads."""
    if cwd is not None and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        with job_lock(job.run_dir):
            if drift := config_drift(job):
                raise ValueError(f"{job.run_dir} was trained with another config "
                                 f"({drift_text(drift)}); move that directory away (or run "
                                 "with --move-stale) to retrain it")
            if job.evaluated or (stage == "train" and job.trained):
                return Outcome("skipped")
            if stage == "train":
                train_stage(job, print)
            else:
                evaluate_stage(job, m, print)
        return Outcome("done")
    except DirectoryBusy as exc:
        return Outcome("held", str(exc))
    except Exception as exc:  # reported by the driver, retried by the next call
        return Outcome("failed", f"{type(exc).__name__}: {exc}")


def run_sweep(m: Manifest, engine: Engine, log: Callable[[str], None] = print,
              only: set[str] | None = None, ignore_records: bool = False,
              threads: int | None = None, task: Callable[..., Outcome] = run_task) -> int:
    """Run every selected job that is not done on ``engine``; the number of jobs left undone.

    A job with a current record (:func:`load_record`) counts as done unless ``ignore_records``.
    A failed task is logged, kept in ``run_dir/sweep-error.txt`` and its job (and the jobs that
    start from it) left for the next call; the others go on. ``task`` is what runs a stage
    (:func:`run_task`; tests pass stand-ins).
    """
    return _Scheduler(m, engine, log, only, ignore_records, threads, task).run()


class _Scheduler:
    """The state of one :func:`run_sweep` call."""

    def __init__(self, m: Manifest, engine: Engine, log: Callable[[str], None],
                 only: set[str] | None, ignore_records: bool, threads: int | None,
                 task: Callable[..., Outcome]):
        self.m, self.engine, self.log, self.threads, self.task = m, engine, log, threads, task
        self.recorded = set() if ignore_records else {
            j.run_dir for j in jobs(m) if not j.evaluated and load_record(m, j) is not None}
        todo = [j for j in jobs(m) if not j.evaluated and j.run_dir not in self.recorded
                and selected(j, only)]
        self.pending = [Task(s, j, i) for i, j in enumerate(todo) for s in STAGES
                        if s == "evaluate" or not j.trained]
        self.trains_here = {t.job.run_dir for t in self.pending if t.stage == "train"}
        self.failed: set[Path] = set()
        self.dropped: set[Path] = set()  # jobs that cannot start in this call
        self.in_flight: dict[Future, Task] = {}
        self.held: list[Task] = []
        self.cwd = os.getcwd()

    def run(self) -> int:
        """Submit, wait, repeat; returns the number of jobs left undone."""
        waiting_for: str | None = None
        while self.pending or self.in_flight or self.held:
            outside = self._submit_ready()
            if self.in_flight:
                finished, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
                self._finish(finished)
                continue
            if not (self.held or outside):
                break  # what is pending waits for nothing that runs
            names = sorted({str(t.job.run_dir) for t in self.held} | outside)
            if names != waiting_for:
                waiting_for = names
                self.log(f".. waiting for {len(names)} run(s) another process holds: "
                         f"{', '.join(map(str, names))}; looking again every "
                         f"{RETRY_SECONDS} s (stop this sweep to leave them to it)")
            pause(RETRY_SECONDS)
            self.pending = sorted(self.pending + self.held, key=lambda t: t.order)
            self.held = []
        left = {t.job.run_dir for t in self.pending} | self.failed | self.dropped
        return len(left)

    def _submit_ready(self) -> set[str]:
        """Submit the ready tasks in order while the engine has room; returns the run
        directories some pending task waits for because another process holds them."""
        outside: set[str] = set()
        for t in list(self.pending):
            if len(self.in_flight) >= self.engine.workers:
                break
            if not any(p is t for p in self.pending):
                continue  # dropped with its job meanwhile
            state = self._readiness(t)
            if isinstance(state, Path):
                outside.add(str(state))
            if state != "ready":
                continue
            self.pending.remove(t)
            if holder := held_by(t.job.run_dir):
                self.held.append(t)  # another process works on it: do not even start
                self.log(f".. {t.name}: {t.job.run_dir} is held by another process "
                         f"({holder}); retried later")
                continue
            fut = self.engine.submit(self.task, t.stage, t.job, self.m, self.threads, self.cwd)
            self.in_flight[fut] = t
        return outside

    def _readiness(self, t: Task) -> str | Path:
        """``ready``, ``wait`` (for a task of this call), ``dropped`` (cannot start now), or
        the run directory it waits for because another process holds it."""
        job = t.job
        if job.run_dir in self.failed | self.dropped:
            self.pending = [p for p in self.pending if p is not t]
            return "dropped"
        if t.stage == "evaluate":
            return "ready" if job.trained or job.run_dir not in self.trains_here else "wait"
        for dep in job.needs:
            if (dep / "summary.json").is_file():
                continue
            if dep in self.failed | self.dropped:
                self._drop(t, f"{dep} did not train in this call")
                return "dropped"
            if dep in self.trains_here:
                return "wait"
            if dep in self.recorded:  # recorded elsewhere, not trained here
                self._drop(t, f"starts from {dep}, which is recorded but not trained on this "
                           f"machine: train it first with --only {dep.parent.name}:{job.seed} "
                           "--ignore-records")
                return "dropped"
            if held_by(dep):
                return dep  # another process trains it
            self._drop(t, f"waits for {dep}, which this call does not train (add "
                       f"{dep.parent.name} to --only)")
            return "dropped"
        return "ready"

    def _drop(self, t: Task, why: str) -> None:
        """Leave ``t``'s job for a later call, saying why."""
        self.pending = [p for p in self.pending if p.job.run_dir != t.job.run_dir]
        self.dropped.add(t.job.run_dir)
        self.log(f"!! {t.job.method} seed {t.job.seed} {why}")

    def _finish(self, finished: set[Future]) -> None:
        """Take the results of finished tasks: report, retry later, or record a failure."""
        broken = False
        for fut in finished:
            t = self.in_flight.pop(fut)
            try:
                out = fut.result()
            except BrokenProcessPool:
                broken = True
                out = Outcome("failed", "BrokenProcessPool: its worker process died (killed, "
                              "out of memory?)")
            except Exception as exc:  # an engine's error (e.g. a Ray worker that died)
                out = Outcome("failed", f"{type(exc).__name__}: {exc}")
            self._take(t, out)
        if broken:  # every task of a broken pool is lost with it
            for fut, t in list(self.in_flight.items()):
                fut.cancel()
                self._take(t, Outcome("failed", "BrokenProcessPool: a worker process of its "
                                      "pool died (killed, out of memory?)"))
            self.in_flight.clear()
            self.engine.restart()

    def _take(self, t: Task, out: Outcome) -> None:
        """Act on one task's outcome."""
        job = t.job
        if out.state == "held":
            self.held.append(t)
            self.log(f".. {t.name}: {out.message}; retried later")
            return
        if out.state == "failed":
            self.failed.add(job.run_dir)
            self.pending = [p for p in self.pending if p.job.run_dir != job.run_dir]
            note = job.run_dir / "sweep-error.txt"
            job.run_dir.mkdir(parents=True, exist_ok=True)
            note.write_text(f"{out.message}\n")
            self.log(f"!! {job.method} seed {job.seed} failed: {out.message} "
                     f"(kept in {note}; the next call retries it)")
        elif t.stage == "train":
            return
        else:
            (job.run_dir / "sweep-error.txt").unlink(missing_ok=True)
        write_report(self.m, self.log)
