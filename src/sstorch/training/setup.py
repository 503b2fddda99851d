"""What a training run works with: data, model (and teacher), optimizer, schedule, factor
regularizer and mixed precision, gathered in one :class:`Trainer` by :func:`build`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from sstorch.attacks import PGD
from sstorch.config import Config, ConfigError
from sstorch.data import DATASET_INFO, build_datasets, canonical_name
from sstorch.io.checkpoint import CheckpointCorrupted, CheckpointError, load_checkpoint
from sstorch.models import build_model
from sstorch.structure.constraints import FactorRegularizer
from sstorch.structure.summary import summary
from sstorch.training.distill import load_teacher
from sstorch.training.distributed import _Dist, _unwrap
from sstorch.training.init import init_from
from sstorch.training.optim import _lr_lambda, _optimizer
from sstorch.training.rundir import RunPlan, _restart_hint

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from sstorch.pruning.hydra import Hydra

__all__ = ["Trainer", "build", "check_constraints", "describe", "resume_from", "subset"]


@dataclass
class Trainer:
    """One run's objects. ``model`` is what trains (DDP-wrapped with several processes),
    ``core`` the plain model inside it; ``best`` is the best validation score so far."""

    cfg: Config
    d: _Dist
    device: torch.device
    run_dir: Path
    train_ds: Dataset
    val_ds: Dataset | None
    test_ds: Dataset
    model: nn.Module
    core: nn.Module
    teacher: nn.Module | None
    init_note: str
    sampler: DistributedSampler | None
    per_rank_batch: int
    steps_per_epoch: int
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    reg: FactorRegularizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    channels_last: bool
    start_epoch: int = 1
    best: float = -1.0
    hydra: Hydra | None = None
    val_loader: DataLoader | None = None
    val_attack: PGD | None = None
    writer: Any = None  # TensorBoard's SummaryWriter on the main process, when installed


def subset(ds: Dataset, n: int | None) -> Dataset:
    """The first ``n`` examples of ``ds`` (all of them when ``n`` is None)."""
    return ds if n is None or n >= len(ds) else Subset(ds, list(range(n)))


def check_constraints(cfg: Config) -> None:
    """ConfigError when factor constraints are asked of a model without factors."""
    c, m = cfg.constraints, cfg.model
    if m.structure == "dense" and (c.lambda_sparsity > 0 or c.lambda_cond > 0):
        raise ConfigError(
            f"model.structure=dense has no separable factors for the constraints to act on: "
            f"set constraints.lambda_sparsity=0 and constraints.lambda_cond=0 (got "
            f"{c.lambda_sparsity:g} and {c.lambda_cond:g})")


def _model(cfg: Config, plan: RunPlan, d: _Dist, device: torch.device, num_classes: int,
           image_shape: tuple[int, ...], mean: Any, std: Any,
           ) -> tuple[nn.Module, nn.Module | None, str]:
    """The model (initialised, DDP-wrapped), the distillation teacher and a note for the log."""
    model = build_model(cfg.model, num_classes, image_shape, mean, std)
    model.to(device)
    note = ""
    if cfg.init_from is not None and (not plan.resume or plan.restart):
        note = "; " + init_from(model, cfg.init_from)
    teacher = None
    if cfg.distill.teacher is not None:
        teacher = load_teacher(cfg.distill.teacher, device, num_classes, image_shape)
        note += f"; distilled ({cfg.distill.method}) from {cfg.distill.teacher}"
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    return model, teacher, note


def build(cfg: Config, plan: RunPlan, d: _Dist, device: torch.device) -> Trainer:
    """Data, model, optimizer, learning-rate schedule, regularizer and AMP of a run, in the
    order that consumes the seeded random streams (so runs stay reproducible)."""
    train_ds, val_ds, test_ds = build_datasets(
        cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
        augment=cfg.data.augment, download=cfg.data.download)
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    train_ds = subset(train_ds, cfg.data.train_subset)
    test_ds = subset(test_ds, cfg.data.test_subset)
    model, teacher, note = _model(cfg, plan, d, device, info.num_classes, info.image_shape,
                                  info.mean, info.std)
    core = _unwrap(model)
    sampler = (DistributedSampler(train_ds, d.world, d.rank, shuffle=True, seed=cfg.seed)
               if d.world > 1 else None)
    per_rank_batch = max(1, cfg.data.batch_size // d.world)
    steps_per_epoch = math.ceil(len(train_ds) / (per_rank_batch * d.world))
    opt = _optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, cfg.epochs * steps_per_epoch))
    c = cfg.constraints
    reg = FactorRegularizer(core, c.lambda_sparsity, c.lambda_cond, sparsity=c.sparsity,
                            cond=c.cond, a=c.a)
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    # bfloat16 has float32's exponent range: no loss scaling (and no underflowing input
    # gradients inside the attack); float16 needs the scaler.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        core.to(memory_format=torch.channels_last)
    return Trainer(cfg, d, device, plan.run_dir, train_ds, val_ds, test_ds, model, core,
                   teacher, note, sampler, per_rank_batch, steps_per_epoch, opt, sched, reg,
                   scaler, use_amp, amp_dtype, channels_last)


def resume_from(t: Trainer, plan: RunPlan) -> None:
    """Load ``last.safetensors`` (weights, optimizer, schedule, RNG) into ``t`` and set the
    epoch to start at; the new config is checked against it before anything changes."""
    try:
        extra = load_checkpoint(plan.last, t.core, t.opt, t.sched)
    except CheckpointCorrupted as exc:
        raise CheckpointError(f"cannot resume {plan.run_dir}: {exc.path} is damaged: "
                              f"{exc.detail}; {_restart_hint(plan.run_dir)}") from exc
    except CheckpointError as exc:
        raise CheckpointError(f"cannot resume {plan.run_dir} with this config (nothing there "
                              f"was changed): {exc}") from exc
    t.start_epoch, t.best = int(extra["epoch"]) + 1, float(extra.get("best", -1.0))


def describe(t: Trainer) -> str:
    """The log line of the model: kind, size, compression, device and run directory."""
    s = summary(t.core)
    m = t.cfg.model
    kind = (m.structure if m.structure in ("dense", "separable")
            else f"{m.structure}, rank {m.rank:g}")
    return (f"model {m.name} ({kind}): {s.total_params:,} params, {s.total_nnz:,} nonzero, "
            f"compression {s.compression:.1f}x; device {t.device}"
            f"{f' x{t.d.world}' if t.d.world > 1 else ''}; run dir {t.run_dir}{t.init_note}")
