"""Where sweep tasks run: in this process, in a local process pool, or on a Ray cluster.

Every engine has the shape of a :class:`concurrent.futures.Executor`: ``submit(fn, *args)``
returns a :class:`~concurrent.futures.Future`, so the scheduler
(:mod:`sstorch.experiments.schedule`) waits on any of them alike.

* :class:`SerialEngine` (``--workers 1``, the default): runs each task at once, in-process.
* :class:`PoolEngine` (``--workers N``): a :class:`~concurrent.futures.ProcessPoolExecutor`
  with the *spawn* start method (no forked torch / OpenMP state); each worker runs its
  tasks with ``threads`` torch threads.
* :class:`RayEngine` (``--ray ADDRESS``): each task is a Ray task of ``num_cpus=threads``;
  ``ADDRESS`` is ``local`` (start a Ray instance here), ``auto`` (the cluster this machine
  belongs to) or ``ray://host:10001`` (a remote cluster through Ray Client). The sweep's
  ``out_dir`` must be on a file system every node sees (checked before anything runs).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

__all__ = ["BrokenProcessPool", "PoolEngine", "RayEngine", "SerialEngine", "thread_env"]


def thread_env(threads: int) -> dict[str, str]:
    """The environment variables that give a worker's BLAS / OpenMP ``threads`` threads."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class SerialEngine:
    """Runs each task when it is submitted, in this process (logs and tracebacks as they are).

    An exception of the task is set on its future, as an executor would.
    """

    workers = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` now; its result (or exception) in a finished future."""
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def restart(self) -> None:
        """Nothing to restart."""

    def close(self) -> None:
        """Nothing to release."""


class PoolEngine:
    """``workers`` spawned worker processes, ``threads`` torch threads each.

    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set in this process's environment while the
    engine is open, so the workers (started on demand) inherit them before they load torch.
    """

    def __init__(self, workers: int, threads: int):
        if workers < 1:
            raise ValueError(f"--workers must be ≥ 1, got {workers}")
        self.workers, self.threads = workers, threads
        self._saved = {k: os.environ.get(k) for k in thread_env(threads)}
        os.environ.update(thread_env(threads))
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue ``fn(*args)`` on the pool (FIFO)."""
        return self._pool.submit(fn, *args)

    def restart(self) -> None:
        """Replace a broken pool (a worker was killed, e.g. by the OOM killer)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def close(self) -> None:
        """Wait for the workers to exit; restore the thread environment variables."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _probe(path: str) -> bool:
    """Whether ``path`` exists where this (Ray) task runs."""
    return Path(path).is_file()


class RayEngine:
    """Tasks on a Ray cluster, ``num_cpus=threads`` each; at most ``workers`` in flight
    (default: the cluster's CPUs ÷ ``threads``).

    Connects with ``ray.init(address)`` unless this process is connected already (then that
    instance is used and left running); :meth:`close` disconnects what it connected.
    """

    def __init__(self, address: str, threads: int, workers: int | None = None):
        try:
            import ray
        except ImportError as exc:
            raise ImportError("--ray needs Ray: pip install 'sstorch[ray]' (or 'ray>=2.9')"
                              ) from exc
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            env = {k: v for k, v in os.environ.items() if k == "SSTORCH_DATA"}
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     runtime_env={"env_vars": {**env, **thread_env(threads)}})
        self.threads = threads
        self._remote: dict[Callable[..., Any], Any] = {}
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus // threads)

    def check_shared(self, out_dir: Path) -> None:
        """Fail fast unless a Ray task sees a file written here under ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".ray-probe-{os.getpid()}"
        probe.write_text("sstorch sweep\n")
        try:
            seen = self._ray.get(self._ray.remote(num_cpus=0)(_probe).remote(str(probe.resolve())))
        finally:
            probe.unlink(missing_ok=True)
        if not seen:
            raise RuntimeError(f"Ray tasks do not see {out_dir.resolve()}: out_dir must be on "
                               "a file system every node of the cluster mounts at that path")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` as a Ray task; its ``ObjectRef`` as a future."""
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(num_cpus=self.threads, max_retries=0)(fn)
        return self._remote[fn].remote(*args).future()

    def restart(self) -> None:
        """Ray replaces dead workers itself."""

    def close(self) -> None:
        """Disconnect from Ray if this engine connected."""
        if self._owned:
            self._ray.shutdown()
