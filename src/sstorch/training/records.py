"""What each epoch leaves behind: its ``metrics.csv`` row (and TensorBoard scalars), the
``best`` / ``last`` checkpoints, a log line, and the ``on_epoch`` callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sstorch.io.checkpoint import save_checkpoint
from sstorch.structure.stats import layer_stats
from sstorch.structure.summary import summary
from sstorch.training.rundir import _write_csv
from sstorch.training.setup import Trainer

__all__ = ["epoch_row", "record_epoch"]


def epoch_row(t: Trainer, epoch: int, train_sums: list[float], val: dict[str, float],
              train_seconds: float, t0: float) -> tuple[dict[str, Any], float]:
    """The ``metrics.csv`` row of ``epoch`` and its score: validation robust accuracy, else
    clean, else (no validation set) training adversarial accuracy."""
    loss_sum, adv_correct, n_seen = train_sums
    score = val.get("robust_acc", val.get("clean_acc", adv_correct / max(n_seen, 1)))
    row: dict[str, Any] = {
        "epoch": epoch, "lr": t.opt.param_groups[0]["lr"],
        "train_loss": loss_sum / max(n_seen, 1), "train_adv_acc": adv_correct / max(n_seen, 1),
        "val_clean_acc": val.get("clean_acc", float("nan")),
        "val_robust_acc": val.get("robust_acc", float("nan")),
        "reg_sparsity": t.reg.last.get("sparsity", 0.0), "reg_cond": t.reg.last.get("cond", 0.0),
        "train_seconds": train_seconds, "epoch_seconds": time.perf_counter() - t0,
        "nnz": summary(t.core).total_nnz,
    }
    for st in layer_stats(t.core):
        row[f"kappa/{st.name}"] = st.kappa
        row[f"nnz/{st.name}"] = st.nnz
    return row, score


def _write_metrics(t: Trainer, epoch: int, row: dict[str, Any]) -> None:
    """Append ``row`` to ``metrics.csv`` and to the TensorBoard events."""
    _write_csv(t.run_dir / "metrics.csv", row)
    if t.writer is not None:
        for k, v in row.items():
            if k != "epoch":
                t.writer.add_scalar(k, v, epoch)
        t.writer.flush()


def _save_checkpoints(t: Trainer, epoch: int, row: dict[str, Any], score: float) -> None:
    """``last.safetensors`` always, ``best.safetensors`` when ``score`` beats ``t.best``.

    "Best" is the highest score among epochs whose model is already pruned to the target
    (earlier, denser epochs are not comparable), so it starts again at ``prune.end_epoch``.
    """
    p = t.cfg.prune
    if epoch == p.end_epoch and p.enabled:
        t.best = -1.0
    improved = (not p.enabled or epoch >= p.end_epoch) and score > t.best
    t.best = max(t.best, score) if improved else t.best
    extra = {"epoch": epoch, "best": t.best, "config": t.cfg.to_dict(), "metrics": row}
    if improved:
        save_checkpoint(t.run_dir / "best.safetensors", t.core, extra=extra, rng=False)
    save_checkpoint(t.run_dir / "last.safetensors", t.core, t.opt, t.sched, extra=extra)


def record_epoch(t: Trainer, epoch: int, row: dict[str, Any], score: float,
                 log: Callable[[str], Any],
                 on_epoch: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Everything the main process writes after ``epoch``; an exception of ``on_epoch``
    stops the run (TensorBoard's writer is closed first)."""
    _write_metrics(t, epoch, row)
    _save_checkpoints(t, epoch, row, score)
    log(f"epoch {epoch}: loss {row['train_loss']:.4f}  train adv acc "
        f"{row['train_adv_acc']:.4f}  val clean {row['val_clean_acc']:.4f}  val robust "
        f"{row['val_robust_acc']:.4f}  ({row['epoch_seconds']:.1f} s)")
    if on_epoch is not None:
        try:
            on_epoch(epoch, dict(row))
        except BaseException:
            if t.writer is not None:
                t.writer.close()
            raise
