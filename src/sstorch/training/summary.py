"""The end of a run: ``summary.json`` with the test accuracy of the best checkpoint, the
model's size and where (on what, with which code) it was trained."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sstorch.io.fsutil import atomic_write_text
from sstorch.io.provenance import code_version, machine_description
from sstorch.structure.stats import layer_stats
from sstorch.structure.summary import summary
from sstorch.training.results import pgd_key
from sstorch.training.setup import Trainer

__all__ = ["write_summary"]


def summary_record(t: Trainer, test: dict[str, float], eval_seconds: float) -> dict[str, Any]:
    """The content of ``summary.json``: the robust accuracy under :func:`pgd_key`."""
    cfg, s = t.cfg, summary(t.core)
    return {
        "run_dir": str(t.run_dir), "model": cfg.model.name, "structure": cfg.model.structure,
        "dataset": cfg.data.name, "params": s.total_params, "nnz": s.total_nnz,
        "compression": s.compression, "fc_compression": s.fc_compression,
        "test_clean_acc": test["clean_acc"],
        pgd_key(cfg.eval.pgd_steps): test.get("robust_acc"),
        "test_n": test["n"], "eps": cfg.attack.eps,
        "eval_seconds": eval_seconds,
        "machine": machine_description(t.device),  # where it was trained (train seconds)
        "code": code_version(),
        "layers": [st.__dict__ for st in layer_stats(t.core)],
    }


def write_summary(t: Trainer, test: dict[str, float], eval_seconds: float,
                  log: Callable[[str], Any]) -> None:
    """Write ``summary.json`` (atomically) and log the test result and the run's files."""
    record = summary_record(t, test, eval_seconds)
    atomic_write_text(t.run_dir / "summary.json", json.dumps(record, indent=2, default=str))
    cfg, run_dir = t.cfg, t.run_dir
    log(f"test: clean {test['clean_acc']:.4f}, PGD-{cfg.eval.pgd_steps} (ε={cfg.attack.eps}) "
        f"{test.get('robust_acc', float('nan')):.4f} on {test['n']} images")
    files = [f for f in ("summary.json", "metrics.csv", "best.safetensors", "last.safetensors")
             if (run_dir / f).is_file()]
    log(f"results in {run_dir}/ ({', '.join(files)})")
