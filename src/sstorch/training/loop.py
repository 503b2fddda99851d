"""Adversarial training: PGD (Madry), TRADES, fast FGSM or none, with the factor constraints.

One run = one directory ``<out_dir>/<name>`` holding ``config.yaml`` (resolved), ``metrics.csv``,
TensorBoard events (when tensorboard is installed), ``best.safetensors`` (by validation robust
accuracy), ``last.safetensors`` and ``summary.json``. ``--resume RUN_DIR`` continues from
``last.safetensors`` exactly (same weights as an uninterrupted run in deterministic mode).

Multi-GPU: ``torchrun --nproc_per_node=N -m sstorch train ...`` runs DistributedDataParallel
(NCCL on GPUs, gloo on CPU); rank 0 logs and writes checkpoints; metrics are summed across ranks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sstorch.config import Config, PruneConfig
from sstorch.io.checkpoint import load_checkpoint
from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.factor import prune_factors
from sstorch.pruning.hydra import Hydra
from sstorch.pruning.magnitude import keep_schedule, linear_layers, prune_linear_
from sstorch.training.distributed import _all_sum, _device, _seed_everything, _setup_distributed
from sstorch.training.epoch import TrainingDiverged, train_epoch
from sstorch.training.objectives import training_loss
from sstorch.training.records import epoch_row, record_epoch
from sstorch.training.rundir import RunDirError, _tensorboard, open_run_dir, plan_run
from sstorch.training.setup import Trainer, build, check_constraints, describe, resume_from
from sstorch.training.summary import write_summary
from sstorch.training.validate import evaluate, final_attack, final_loader, val_attack, val_loader

__all__ = ["RunDirError", "TrainingDiverged", "evaluate", "train"]


def train(cfg: Config, resume: str | Path | None = None, log=print,
          overwrite: bool = False,
          on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    """Train (or resume) a run; returns its directory. See the module docstring.

    ``on_epoch(epoch, row)`` is called on the main process after each epoch's checkpoint is
    written, with that epoch's ``metrics.csv`` row; an exception it raises stops the run there
    (a hyperparameter search prunes a hopeless trial this way; ``--resume`` continues it).

    The run directory is locked for the whole call (:func:`sstorch.io.fsutil.lock_dir`, released
    by the operating system if the process dies) and temporary files of interrupted writes are
    removed. A fresh run refuses a directory that already holds a run unless ``overwrite``,
    which deletes that run's files once the new run's data and model are ready. With
    ``resume`` nothing in the directory changes until the config has been checked against
    ``last.safetensors``; a run killed before its first checkpoint starts again at epoch 1.

    Raises:
        RunDirError: the directory holds another run, or its run cannot be resumed.
        sstorch.io.fsutil.DirectoryBusy: another process trains or evaluates in the directory.
        CheckpointError: ``last.safetensors`` is damaged or does not fit the config.
    """
    if resume is not None and overwrite:
        raise RunDirError("--resume continues a run and --overwrite replaces it; give one")
    check_constraints(cfg)
    with contextlib.ExitStack() as stack:
        return _train(cfg, resume, log, overwrite, stack, on_epoch)


def _train(cfg: Config, resume: str | Path | None, log: Callable[[str], Any], overwrite: bool,
           stack: contextlib.ExitStack,
           on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    """:func:`train` inside the ``stack`` that holds the run directory's lock."""
    d = _setup_distributed(cfg.device)
    device = _device(cfg.device, d)
    _seed_everything(cfg.seed + d.rank, cfg.deterministic)
    plan = plan_run(cfg, resume, overwrite, d.main, stack, log)
    t = build(cfg, plan, d, device)
    if plan.resume and not plan.restart:
        resume_from(t, plan)
    if d.main:  # data, model and checkpoint are valid: only now touch the run directory
        open_run_dir(cfg, plan, t.start_epoch, stack, log)
    t.hydra = _hydra(t)
    t.val_loader, t.val_attack = val_loader(cfg, t.val_ds, d), val_attack(cfg)
    t.writer = _tensorboard(t.run_dir, t.start_epoch) if d.main else None
    if d.main:
        log(describe(t))

    for epoch in range(t.start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        step_opt = _epoch_optimizer(t, epoch)
        sums = train_epoch(t, epoch, step_opt, training_loss)
        train_seconds = time.perf_counter() - t0
        sums = _all_sum(sums, device, d)
        _prune_step(t, epoch)
        val = evaluate(t.core, t.val_loader, device, t.val_attack, d) if t.val_loader else {}
        row, score = epoch_row(t, epoch, sums, val, train_seconds, t0)
        if d.main:
            record_epoch(t, epoch, row, score, log, on_epoch)
        if d.world > 1:
            dist.barrier()

    _final_test(t, log)
    if t.writer is not None:
        t.writer.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return t.run_dir


def _final_test(t: Trainer, log: Callable[[str], Any]) -> None:
    """Evaluate the best checkpoint on the test set; the main process writes summary.json."""
    if (t.run_dir / "best.safetensors").is_file():
        load_checkpoint(t.run_dir / "best.safetensors", t.core, restore_rng=False)
    loader = final_loader(t.cfg, t.test_ds, t.d)
    t0 = time.perf_counter()
    test = evaluate(t.core, loader, t.device, final_attack(t.cfg), t.d)
    if t.d.main:
        write_summary(t, test, time.perf_counter() - t0, log)


# --------------------------------------------------------------------------- pruning schedule


def _hydra(t: Trainer) -> Hydra | None:
    """HYDRA (``prune.method=hydra``): scores learn in epochs start..end_epoch with the
    weights frozen, then the kept weights fine-tune; None for any other method."""
    cfg, d, core = t.cfg, t.d, t.core
    hydra = None
    if cfg.prune.method == "hydra":
        if d.world > 1:
            raise ValueError("prune.method=hydra runs in one process (its scores are not "
                             "synchronised across ranks)")
        hydra = Hydra(core, _final_keep(core, cfg.prune), cfg.optim.momentum,
                      cfg.optim.weight_decay)
    return hydra


def _epoch_optimizer(t: Trainer, epoch: int) -> torch.optim.Optimizer:
    """The optimizer of this epoch: HYDRA's scores while they learn, else the model's."""
    cfg, hydra, opt = t.cfg, t.hydra, t.opt
    if hydra is not None and epoch == cfg.prune.start_epoch and not hydra.active:
        hydra.attach()
    return hydra.optimizer if hydra is not None and hydra.active else opt


def _prune_step(t: Trainer, epoch: int) -> None:
    """After ``epoch``: end HYDRA's score phase at ``prune.end_epoch``, or take the next step
    of the magnitude / factor pruning ramp."""
    cfg, hydra, core = t.cfg, t.hydra, t.core
    p = cfg.prune
    if hydra is not None:
        if epoch >= p.end_epoch and hydra.active:
            hydra.finalize()
    elif p.enabled and p.start_epoch <= epoch:
        prune_to(core, p, min(1.0, (epoch - p.start_epoch + 1)
                            / (p.end_epoch - p.start_epoch + 1)))


def prune_to(model: nn.Module, p: PruneConfig, frac: float) -> None:
    """One step of the pruning ramp (``frac`` of the way from start_epoch to end_epoch).

    Separable models: factor entries, linear in sparsity (:func:`prune_factors`). Dense models:
    the weights of every ``nn.Linear`` by global magnitude, geometric in the number of weights
    kept (:func:`sstorch.pruning.magnitude.keep_schedule`), down to ``keep`` or a ``target``
    fraction of
    zeros.
    """
    if any(isinstance(m, SeparableLinear) for m in model.modules()):
        prune_factors(model, p.target * frac)
        return
    total = sum(layer.weight.numel() for _, layer in linear_layers(model))
    prune_linear_(model, keep=keep_schedule(total, _final_keep(model, p), frac))


def _final_keep(model: nn.Module, p: PruneConfig) -> int:
    """Linear weights kept at the end: ``prune.keep``, else ``(1 − prune.target)`` of them."""
    total = sum(layer.weight.numel() for _, layer in linear_layers(model))
    return min(total, p.keep if p.keep is not None
               else total - math.floor(p.target * total + 1e-9))
