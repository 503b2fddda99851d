"""Fault injection (issue 24): ``sstorch train`` killed with SIGKILL again and again — between
training steps, during validation, before and after each atomic rename, between writing a
temporary file and its fsync, half-way through a checkpoint (leaving safetensors' own temporary
file as its writer would), at random moments — and resumed each time, ends with the same
checkpoints, bit for bit, as a run that was never interrupted, and no temporary file.

Each life of the run is a real process running the CLI (``sstorch.cli.main``, what ``python -m
sstorch train`` runs) that is SIGKILLed. To keep the test fast the processes are forked from
one helper process that has imported sstorch and torch once (a "zygote"), instead of paying
the import for each of the ~25 lives; the helper itself never runs torch code, so forking it
is safe. The kill points are installed in the child right after the fork.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

import sstorch
from sstorch.io.fsutil import LOCK_NAME, is_temp_name

EPOCHS = 3
SETS = ["data.name=digits", "model.hidden=[[4,4]]", "device=cpu", f"epochs={EPOCHS}",
        "deterministic=true", "data.train_subset=96", "data.val_size=32", "data.test_subset=32",
        "data.batch_size=32", "data.eval_batch_size=64", "attack.eps=0.1",
        "attack.step_size=0.05", "attack.steps=2", "eval.pgd_steps=2", "eval.val_pgd_steps=2",
        "prune.target=0.5", "prune.start_epoch=1", "prune.end_epoch=2"]
TIMING = {"train_seconds", "epoch_seconds", "eval_seconds"}

# Runs in the helper process: read one JSON request per line, fork a child that installs the
# kill point and runs the CLI, report {"pid", "signal", "code"} when it ends.
ZYGOTE = r'''
import json, os, signal, sys, time
import safetensors.torch
import sstorch.io.checkpoint, sstorch.cli, sstorch.training.loop

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def install(kind, n, when):
    count = [0]
    def hit():
        count[0] += 1
        return count[0] == n
    if kind == "replace":  # every atomic write ends in os.replace
        real = os.replace
        def replace(src, dst, *a, **k):
            fire = hit()
            if fire and when == "before":
                die()
            real(src, dst, *a, **k)
            if fire:
                die()
        os.replace = replace
    elif kind == "fsync":  # temporary file written, not yet fsynced (or the directory's)
        real = os.fsync
        def fsync(fd):
            if hit():
                die()
            real(fd)
        os.fsync = fsync
    elif kind == "save_file":  # half-way through a checkpoint, as safetensors writes it
        real = sstorch.io.checkpoint.save_file
        def save_file(tensors, filename, metadata=None):
            if hit():
                data = safetensors.torch.save(tensors, metadata=metadata)
                folder = os.path.dirname(filename)
                with open(os.path.join(folder, ".tmpQ7xK2p"), "wb") as f:  # its temp name
                    f.write(data[: len(data) // 2])
                with open(filename, "wb") as f:
                    f.write(data[: len(data) // 3])
                die()
            real(tensors, filename, metadata=metadata)
        sstorch.io.checkpoint.save_file = save_file
    elif kind == "step":  # inside a training step
        real = sstorch.training.loop.training_loss
        def adv_loss(*a, **k):
            if hit():
                die()
            return real(*a, **k)
        sstorch.training.loop.training_loss = adv_loss
    elif kind == "eval":  # validation of an epoch, or the final test
        real = sstorch.training.loop.evaluate
        def evaluate(*a, **k):
            if hit():
                die()
            return real(*a, **k)
        sstorch.training.loop.evaluate = evaluate

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        kind, n, when = req["fault"]
        if kind not in ("none", "timer"):
            install(kind, n, when)
        try:
            code = sstorch.cli.main(req["argv"])
        except SystemExit as exc:
            code = exc.code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    deadline = time.monotonic() + req["fault"][1] if req["fault"][0] == "timer" else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = None
        time.sleep(0.002)
    print(json.dumps({"pid": pid, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status)
                      else None, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status)
                      else None}), flush=True)
'''

# Kill points that fire in any life with at least one epoch left to train. In such a life the
# writes come in this order: config.yaml, then per epoch metrics.csv, [best.safetensors],
# last.safetensors; each atomic write calls fsync twice (its file, then the directory).
EPOCH_FAULTS = [
    ("step", 2, ""), ("replace", 1, "before"), ("fsync", 1, ""), ("replace", 2, "after"),
    ("save_file", 1, ""), ("replace", 3, "after"), ("timer", 0.05, ""), ("eval", 1, ""),
    ("fsync", 3, ""), ("replace", 3, "before"), ("fsync", 6, ""), ("step", 3, ""),
    ("replace", 4, "after"), ("fsync", 5, ""), ("timer", 0.2, ""), ("replace", 4, "before"),
    ("replace", 4, "after"),
]
# Kill points that fire in a life with no epoch left: config.yaml, the final test on the best
# checkpoint, summary.json.
FINAL_FAULTS = [("eval", 1, ""), ("replace", 2, "before"), ("fsync", 2, ""),
                ("replace", 1, "before"), ("fsync", 3, ""), ("replace", 2, "after")]
KILLS = 24


class Zygote:
    """The helper process; :meth:`life` runs one ``sstorch`` CLI call with a kill point."""

    def __init__(self, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(Path(sstorch.__file__).parents[1]),
                                              os.environ.get("PYTHONPATH", "")])}
        env.pop("SSTORCH_DEBUG", None)
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def life(self, argv: list[str], fault: tuple) -> dict:
        self.proc.stdin.write(json.dumps({"argv": argv, "fault": list(fault),
                                          "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the helper process died; log:\n{self.log.read_text()[-3000:]}"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _checkpoint(path: Path) -> tuple[dict, dict]:
    """(tensor bytes by key, metadata with the timings left out) of a checkpoint."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).contiguous().view(-1).view(dtype=torch.uint8).numpy()
                   .tobytes() for k in f.keys()}
        meta = json.loads(f.metadata()["sstorch"])
    for key in TIMING:
        meta["extra"]["metrics"].pop(key, None)
    return tensors, meta


def _metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIMING}


def _last_epoch(run_dir: Path) -> int:
    from sstorch.io.checkpoint import CheckpointError, read_metadata

    try:
        return int(read_metadata(run_dir / "last.safetensors")["epoch"])
    except CheckpointError:
        return 0


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "k"
    fresh = ["train", "--set", *SETS, f"out_dir={runs}", "name=k"]
    zygote = Zygote(tmp_path / "lives.log")
    try:
        # the uninterrupted run, at the same path (paths are part of config and summary)
        assert zygote.life(fresh, ("none", 0, "")) == {"pid": pytest.approx(0, abs=1e9),
                                                        "signal": None, "code": 0}
        reference = shutil.move(run_dir, tmp_path / "reference")

        kills, hits, i, j = 0, [], 0, 0
        while kills < KILLS:
            if _last_epoch(run_dir) < EPOCHS:
                fault, i = EPOCH_FAULTS[i % len(EPOCH_FAULTS)], i + 1
            else:
                fault, j = FINAL_FAULTS[j % len(FINAL_FAULTS)], j + 1
            argv = (["train", "--resume", str(run_dir)] if (run_dir / "config.yaml").is_file()
                    else fresh)
            end = zygote.life(argv, fault)
            if end["signal"] == signal.SIGKILL:
                kills += 1
                hits.append((fault, _last_epoch(run_dir)))
                continue
            # only a timer may miss (the life ended first); everything else must have fired
            assert fault[0] == "timer" and end["code"] == 0, (
                fault, end, (tmp_path / "lives.log").read_text()[-3000:])
        end = zygote.life(["train", "--resume", str(run_dir)], ("none", 0, ""))
        assert end["code"] == 0, (tmp_path / "lives.log").read_text()[-3000:]
    finally:
        zygote.close()

    assert kills >= 20
    # every stage was hit: checkpoint writes of each epoch, and the final test / summary
    assert {e for f, e in hits if f[0] in ("save_file", "replace", "fsync")} >= set(
        range(EPOCHS))
    assert sum(e == EPOCHS for _, e in hits) >= 3

    for name in ("best.safetensors", "last.safetensors"):
        got, want = _checkpoint(run_dir / name), _checkpoint(Path(reference) / name)
        assert sorted(got[0]) == sorted(want[0])
        assert [k for k in got[0] if got[0][k] != want[0][k]] == [], name
        assert got[1] == want[1], name
    assert _metrics(run_dir) == _metrics(Path(reference))  # one row per epoch, same numbers
    assert _summary(run_dir) == _summary(Path(reference))
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == yaml.safe_load(
        (Path(reference) / "config.yaml").read_text())  # (a resume writes 1 as 1.0)
    left = sorted(p.name for p in run_dir.iterdir())
    assert not [n for n in left if is_temp_name(n) or (n.startswith(".") and n != LOCK_NAME)]
    assert set(left) <= {"config.yaml", "metrics.csv", "tb", "best.safetensors",
                         "last.safetensors", "summary.json", LOCK_NAME}
