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
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from sstorch.attacks import FGSM, PGD, trades_adversary
from sstorch.config import Config, ConfigError, PruneConfig
from sstorch.data import DATASET_INFO, build_datasets, canonical_name
from sstorch.io.checkpoint import (
    CheckpointCorrupted,
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from sstorch.io.fsutil import (
    atomic_write_text,
    fs_errors,
    lock_dir,
    remove_stale_temps,
)
from sstorch.io.provenance import code_version, machine_description
from sstorch.layers.lowrank import LowRankLinear
from sstorch.layers.separable import SeparableLinear
from sstorch.layers.tensorized import TensorizedLinear
from sstorch.models import build_model
from sstorch.pruning.factor import prune_factors
from sstorch.pruning.hydra import Hydra
from sstorch.pruning.magnitude import keep_schedule, linear_layers, prune_linear_
from sstorch.structure.constraints import FactorRegularizer
from sstorch.structure.init import load_dense_state as init_from_dense_
from sstorch.structure.init import load_dense_state as load_dense_
from sstorch.structure.stats import layer_stats
from sstorch.structure.summary import summary
from sstorch.training.distill import distill_loss, load_teacher
from sstorch.training.distributed import (
    _all_sum,
    _device,
    _Dist,
    _seed_everything,
    _setup_distributed,
    _shard,
    _unwrap,
)
from sstorch.training.optim import _lr_lambda, _optimizer
from sstorch.training.rundir import (
    RunDirError,
    _check_fresh,
    _check_restartable,
    _delete,
    _listed,
    _restart_hint,
    _tensorboard,
    _truncate_csv,
    _write_csv,
)

__all__ = ["RunDirError", "TrainingDiverged", "evaluate", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def eps_scale(cfg: Config, step: int, steps_per_epoch: int) -> float:
    r"""Fraction of ε used at training step ``step`` (0-based, counted over all epochs).

    .. math:: \min(1, (step + 1) / (E_w · S))

    with ``E_w = attack.eps_warmup_epochs`` and S steps per epoch; 1 when ``E_w = 0``.
    """
    warm = cfg.attack.eps_warmup_epochs * steps_per_epoch
    return 1.0 if warm <= 0 else min(1.0, (step + 1) / warm)


def _adv_loss(cfg: Config, model: nn.Module, x: Tensor, y: Tensor,
              core: nn.Module | None = None, scale: float = 1.0,
              teacher: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """The training loss and the logits on the adversarial (or clean) inputs.

    The attack is crafted on ``core`` (the unwrapped model: no DDP gradient sync for input
    gradients) in eval mode, so batch-norm statistics see only the training forward. ``scale``
    multiplies ε and the step size (the ε warm-up, :func:`eps_scale`). With a ``teacher``
    (``distill.teacher``) the loss is robust distillation
    (:func:`sstorch.training.distill.distill_loss`).
    """
    a = cfg.attack
    core = core if core is not None else model
    if teacher is not None:
        return distill_loss(model, teacher, x, y, cfg.distill, a.eps * scale,
                            a.step_size * scale, a.steps, core)
    if a.name == "none" or a.eps == 0:
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    core.eval()
    eps, step_size = a.eps * scale, a.step_size * scale
    if a.name == "pgd":
        x_adv = PGD(eps, step_size, a.steps, random_start=a.random_start)(core, x, y)
    elif a.name == "fgsm":
        x_adv = FGSM(eps, step_size=step_size, random_start=a.random_start)(core, x, y)
    else:
        x_adv = trades_adversary(core, x, eps, step_size, a.steps)
    model.train()
    if a.name == "trades":
        logits_clean = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1),
                          reduction="batchmean")
        return F.cross_entropy(logits_clean, y) + a.trades_beta * robust, logits_adv
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             attack: PGD | None = None, d: _Dist | None = None) -> dict[str, float]:
    """Clean accuracy and (if ``attack``) robust accuracy, summed over ranks.

    Only examples classified correctly on clean inputs are attacked (an error stays an error).
    """
    d = d or _Dist()
    model.eval()
    correct = robust = total = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        correct += ok.sum().item()
        total += y.numel()
        if attack is not None and ok.any():
            xa = attack(model, x[ok], y[ok])
            with torch.no_grad():
                robust += (model(xa).argmax(1) == y[ok]).sum().item()
    correct, robust, total = _all_sum([correct, robust, total], device, d)
    out = {"clean_acc": correct / max(total, 1), "n": int(total)}
    if attack is not None:
        out["robust_acc"] = robust / max(total, 1)
    return out


def _subset(ds, n: int | None):
    return ds if n is None or n >= len(ds) else Subset(ds, list(range(n)))


def _init_from(model: nn.Module, target: str) -> str:
    """Load the model weights of a run directory (its best, else last, checkpoint) or of a
    ``.safetensors`` checkpoint into ``model``; the optimizer, epoch and RNG start afresh.

    A baseline model (``model.baseline``) can start from a dense run: each dense Linear weight is
    decomposed into its layer (:func:`sstorch.structure.init.load_dense_state`); so can a
    separable
    one, each layer getting the nearest Kronecker sum of its rank
    (:func:`sstorch.structure.surgery.load_dense_`). Returns a note for the log.
    """
    path = Path(target)
    if path.is_dir():
        ckpt = next((path / f for f in ("best.safetensors", "last.safetensors")
                     if (path / f).is_file()), None)
        if ckpt is None:
            raise ConfigError(f"init_from={target!r} holds no best.safetensors or "
                              "last.safetensors; finish training that run first")
    elif path.is_file():
        ckpt = path
    else:
        raise ConfigError(f"init_from={target!r} does not exist; give a run directory made by "
                          "`sstorch train` or a .safetensors checkpoint")
    try:
        if any(isinstance(m, (LowRankLinear, TensorizedLinear)) for m in model.modules()):
            errors = init_from_dense_(model, load_weights(ckpt))
            return f"initialized from {ckpt}" + "".join(
                f"; {n} decomposed (relative error {e:.3f})" for n, e in errors.items())
        separable = [n for n, m in model.named_modules() if isinstance(m, SeparableLinear)]
        weights = load_weights(ckpt) if separable else {}
        if any(f"{n}.weight" in weights for n in separable):  # a dense run: compress it
            errors = load_dense_(model, weights)
            return f"initialized from {ckpt}" + "".join(
                f"; {n} ← nearest Kronecker sum (relative error {e:.3f})"
                for n, e in errors.items())
        load_checkpoint(ckpt, model, restore_rng=False, strict=True)
    except CheckpointCorrupted as exc:
        raise ConfigError(f"init_from={target!r}: {exc.path} is damaged: {exc.detail}; restore "
                          "it from a copy or start from another checkpoint") from exc
    except (CheckpointError, ValueError) as exc:
        raise ConfigError(f"init_from={target!r}: its weights do not fit this model (the model "
                          f"section must match the run it comes from): {exc}") from exc
    return f"initialized from {ckpt}"


def _prune(model: nn.Module, p: PruneConfig, frac: float) -> None:
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


def _check_constraints(cfg: Config) -> None:
    c, m = cfg.constraints, cfg.model
    if not m.separable and m.baseline == "none" and (c.lambda_sparsity > 0
                                                      or c.lambda_cond > 0):
        raise ConfigError(
            f"model.separable=false has no separable factors for the constraints to act on: "
            f"set constraints.lambda_sparsity=0 and constraints.lambda_cond=0 (got "
            f"{c.lambda_sparsity:g} and {c.lambda_cond:g})")


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
    _check_constraints(cfg)
    with contextlib.ExitStack() as stack:
        return _train(cfg, resume, log, overwrite, stack, on_epoch)


def _train(cfg: Config, resume: str | Path | None, log, overwrite: bool,
           stack: contextlib.ExitStack,
           on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    d = _setup_distributed(cfg.device)
    device = _device(cfg.device, d)
    _seed_everything(cfg.seed + d.rank, cfg.deterministic)
    run_dir = Path(resume) if resume is not None else Path(cfg.out_dir) / cfg.name
    if resume is not None and not run_dir.is_dir():
        raise RunDirError(f"cannot resume: {run_dir} is not a directory; pass the run directory "
                          "of an earlier `sstorch train`")
    locked = False
    to_delete: list[str] = []

    def lock() -> None:
        nonlocal locked, to_delete
        stack.enter_context(lock_dir(run_dir, "sstorch train"))
        locked = True
        if removed := remove_stale_temps(run_dir):
            log(f"removed {len(removed)} temporary file(s) of interrupted writes in {run_dir}: "
                f"{_listed([p.name for p in removed])}")
        if resume is None:
            to_delete = _check_fresh(run_dir, overwrite)

    if d.main and run_dir.is_dir():  # check the directory before the (slow) data loading
        lock()
    last = run_dir / "last.safetensors"
    restart = resume is not None and not last.is_file()  # killed before its first checkpoint
    if restart:
        _check_restartable(run_dir)
    train_ds, val_ds, test_ds = build_datasets(
        cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, seed=cfg.seed,
        augment=cfg.data.augment, download=cfg.data.download)
    info = DATASET_INFO[canonical_name(cfg.data.name)]
    train_ds = _subset(train_ds, cfg.data.train_subset)
    test_ds = _subset(test_ds, cfg.data.test_subset)
    model = build_model(cfg.model, info.num_classes, info.image_shape, info.mean, info.std)
    model.to(device)
    init_note = ""
    if cfg.init_from is not None and (resume is None or restart):
        init_note = "; " + _init_from(model, cfg.init_from)
    teacher = None
    if cfg.distill.teacher is not None:
        teacher = load_teacher(cfg.distill.teacher, device, info.num_classes, info.image_shape)
        init_note += f"; distilled ({cfg.distill.method}) from {cfg.distill.teacher}"
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    core = _unwrap(model)

    sampler = (torch.utils.data.DistributedSampler(train_ds, d.world, d.rank, shuffle=True,
                                                   seed=cfg.seed) if d.world > 1 else None)
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

    start_epoch, best = 1, -1.0
    if resume is not None and not restart:
        # the new config against the checkpoint, before anything in run_dir changes
        try:
            extra = load_checkpoint(last, core, opt, sched)
        except CheckpointCorrupted as exc:
            raise CheckpointError(f"cannot resume {run_dir}: {exc.path} is damaged: "
                                  f"{exc.detail}; {_restart_hint(run_dir)}") from exc
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume {run_dir} with this config (nothing there was "
                                  f"changed): {exc}") from exc
        start_epoch, best = int(extra["epoch"]) + 1, float(extra.get("best", -1.0))
    if d.main:  # data, model and checkpoint are valid: only now touch the run directory
        if not locked:
            with fs_errors(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
            lock()
        if to_delete:
            _delete(run_dir, to_delete)
            log(f"--overwrite: deleted the previous run's files in {run_dir} "
                f"({_listed(to_delete)})")
        if restart:  # what the killed first attempt wrote before its first checkpoint
            _delete(run_dir, [n for n in ("metrics.csv", "tb", "best.safetensors")
                              if (run_dir / n).exists()])
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _truncate_csv(run_dir / "metrics.csv", start_epoch)
        if restart:
            log(f"no checkpoint in {run_dir} yet (stopped during epoch 1): starting it again "
                "from epoch 1")
        elif resume is not None:
            log(f"resumed {run_dir} at epoch {start_epoch}")
    hydra = None  # HYDRA: scores learn in epochs start..end_epoch (weights frozen), then fine-tune
    if cfg.prune.method == "hydra":
        if d.world > 1:
            raise ValueError("prune.method=hydra runs in one process (its scores are not "
                             "synchronised across ranks)")
        hydra = Hydra(core, _final_keep(core, cfg.prune), cfg.optim.momentum,
                      cfg.optim.weight_decay)
    eval_bs = cfg.data.eval_batch_size
    val_loader = (DataLoader(_shard(val_ds, d), eval_bs, num_workers=cfg.data.num_workers)
                  if val_ds is not None and len(val_ds) > 0 else None)
    val_attack = (PGD(cfg.attack.eps, cfg.attack.step_size, cfg.eval.val_pgd_steps)
                  if cfg.attack.eps > 0 else None)
    writer = _tensorboard(run_dir, start_epoch) if d.main else None
    if d.main:
        s = summary(core)
        m = cfg.model
        kind = ("separable" if m.separable else "dense" if m.baseline == "none"
                else f"{m.baseline}, rank {m.baseline_rank:g}")
        log(f"model {m.name} ({kind}): {s.total_params:,} params, {s.total_nnz:,} nonzero, "
            f"compression {s.compression:.1f}x; device {device}"
            f"{f' x{d.world}' if d.world > 1 else ''}; run dir {run_dir}{init_note}")

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        if hydra is not None and epoch == cfg.prune.start_epoch and not hydra.active:
            hydra.attach()
        # the optimizer of this epoch: HYDRA's scores while they learn, else the model's
        step_opt = hydra.optimizer if hydra is not None and hydra.active else opt
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(train_ds, per_rank_batch, shuffle=sampler is None, sampler=sampler,
                            generator=gen, num_workers=cfg.data.num_workers, drop_last=False)
        sums = [0.0, 0.0, 0.0]  # loss·n, adversarial correct, n
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not d.main,
                   leave=False, dynamic_ncols=True, file=sys.stderr)
        for i, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            scale = eps_scale(cfg, (epoch - 1) * steps_per_epoch + i, steps_per_epoch)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss, logits = _adv_loss(cfg, model, x, y, core, scale, teacher)
            total = loss.float() + reg()  # the factor penalties (SVD-based) in float32
            if not torch.isfinite(total):
                last = run_dir / "last.safetensors"
                kept = (f"the last good checkpoint is {last}" if last.is_file()
                        else "no checkpoint was written yet")
                if writer is not None:
                    writer.close()
                clip = ("" if cfg.optim.grad_clip else
                        ", or clip the gradient norm (--set optim.grad_clip=1.0)")
                raise TrainingDiverged(
                    f"loss became {total.item()} at epoch {epoch}; training stopped and {kept}. "
                    f"Lower optim.lr or the constraint weights{clip}.")
            step_opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(step_opt)
                nn.utils.clip_grad_norm_(model.parameters() if step_opt is opt else
                                         step_opt.param_groups[0]["params"], cfg.optim.grad_clip)
            if step_opt is not opt:  # the scores follow the run's learning-rate schedule
                step_opt.param_groups[0]["lr"] = sched.get_last_lr()[0]
            scaler.step(step_opt)
            scaler.update()
            if step_opt is not opt:
                hydra.update_masks()
                with warnings.catch_warnings():  # the model's optimizer rests on purpose
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    sched.step()
            else:
                sched.step()
            n = y.numel()
            sums[0] += loss.item() * n
            sums[1] += (logits.argmax(1) == y).sum().item()
            sums[2] += n
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", adv_acc=f"{sums[1] / sums[2]:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - t0
        loss_sum, adv_correct, n_seen = _all_sum(sums, device, d)

        p = cfg.prune
        if hydra is not None:
            if epoch >= p.end_epoch and hydra.active:
                hydra.finalize()
        elif p.enabled and p.start_epoch <= epoch:
            _prune(core, p, min(1.0, (epoch - p.start_epoch + 1)
                                / (p.end_epoch - p.start_epoch + 1)))

        val = evaluate(core, val_loader, device, val_attack, d) if val_loader else {}
        score = val.get("robust_acc", val.get("clean_acc", adv_correct / max(n_seen, 1)))
        row: dict[str, Any] = {
            "epoch": epoch, "lr": opt.param_groups[0]["lr"],
            "train_loss": loss_sum / max(n_seen, 1), "train_adv_acc": adv_correct / max(n_seen, 1),
            "val_clean_acc": val.get("clean_acc", float("nan")),
            "val_robust_acc": val.get("robust_acc", float("nan")),
            "reg_sparsity": reg.last.get("sparsity", 0.0), "reg_cond": reg.last.get("cond", 0.0),
            "train_seconds": train_seconds, "epoch_seconds": time.perf_counter() - t0,
            "nnz": summary(core).total_nnz,
        }
        for st in layer_stats(core):
            row[f"kappa/{st.name}"] = st.kappa
            row[f"nnz/{st.name}"] = st.nnz
        if d.main:
            _write_csv(run_dir / "metrics.csv", row)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch)
                writer.flush()
            # "best" = highest validation robust accuracy among epochs whose factors are
            # already pruned to the target (earlier, denser epochs are not comparable).
            if epoch == cfg.prune.end_epoch and cfg.prune.enabled:
                best = -1.0
            improved = (not cfg.prune.enabled or epoch >= cfg.prune.end_epoch) and score > best
            best = max(best, score) if improved else best
            extra = {"epoch": epoch, "best": best, "config": cfg.to_dict(), "metrics": row}
            if improved:
                save_checkpoint(run_dir / "best.safetensors", core, extra=extra, rng=False)
            save_checkpoint(run_dir / "last.safetensors", core, opt, sched, extra=extra)
            log(f"epoch {epoch}: loss {row['train_loss']:.4f}  train adv acc "
                f"{row['train_adv_acc']:.4f}  val clean {row['val_clean_acc']:.4f}  val robust "
                f"{row['val_robust_acc']:.4f}  ({row['epoch_seconds']:.1f} s)")
            if on_epoch is not None:
                try:
                    on_epoch(epoch, dict(row))
                except BaseException:
                    if writer is not None:
                        writer.close()
                    raise
        if d.world > 1:
            dist.barrier()

    # Final evaluation of the best checkpoint on the test set.
    if (run_dir / "best.safetensors").is_file():
        load_checkpoint(run_dir / "best.safetensors", core, restore_rng=False)
    test_loader = DataLoader(_shard(test_ds, d), eval_bs, num_workers=cfg.data.num_workers)
    if cfg.eval.n is not None:
        test_loader = DataLoader(_shard(_subset(test_ds, cfg.eval.n), d), eval_bs)
    t0 = time.perf_counter()
    test_attack = (PGD(cfg.attack.eps, cfg.attack.step_size, cfg.eval.pgd_steps,
                       restarts=cfg.eval.pgd_restarts) if cfg.attack.eps > 0 else None)
    test = evaluate(core, test_loader, device, test_attack, d)
    if d.main:
        s = summary(core)
        result = {
            "run_dir": str(run_dir), "model": cfg.model.name, "separable": cfg.model.separable,
            "baseline": cfg.model.baseline,
            "dataset": cfg.data.name, "params": s.total_params, "nnz": s.total_nnz,
            "compression": s.compression, "fc_compression": s.fc_compression,
            "test_clean_acc": test["clean_acc"],
            f"test_pgd{cfg.eval.pgd_steps}_acc": test.get("robust_acc"),
            "test_n": test["n"], "eps": cfg.attack.eps,
            "eval_seconds": time.perf_counter() - t0,
            "machine": machine_description(device),  # where it was trained (train seconds)
            "code": code_version(),
            "layers": [st.__dict__ for st in layer_stats(core)],
        }
        atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2, default=str))
        log(f"test: clean {test['clean_acc']:.4f}, PGD-{cfg.eval.pgd_steps} (ε={cfg.attack.eps}) "
            f"{test.get('robust_acc', float('nan')):.4f} on {test['n']} images")
        files = [f for f in ("summary.json", "metrics.csv", "best.safetensors", "last.safetensors")
                 if (run_dir / f).is_file()]
        log(f"results in {run_dir}/ ({', '.join(files)})")
    if writer is not None:
        writer.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir
