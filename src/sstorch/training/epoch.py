"""One training epoch: a pass over the training set with the run's objective, the factor
penalties, the (HYDRA or model) optimizer step and the learning-rate schedule."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sstorch.training.objectives import eps_scale
from sstorch.training.setup import Trainer

__all__ = ["TrainingDiverged", "train_epoch"]

# the signature of training_loss: (cfg, model, x, y, core, scale, teacher) -> (loss, logits)
LossFn = Callable[..., tuple[Tensor, Tensor]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _diverged(t: Trainer, epoch: int, total: Tensor) -> TrainingDiverged:
    """The error of a non-finite loss (TensorBoard's writer is closed first)."""
    last = t.run_dir / "last.safetensors"
    kept = (f"the last good checkpoint is {last}" if last.is_file()
            else "no checkpoint was written yet")
    if t.writer is not None:
        t.writer.close()
    clip = ("" if t.cfg.optim.grad_clip else
            ", or clip the gradient norm (--set optim.grad_clip=1.0)")
    return TrainingDiverged(
        f"loss became {total.item()} at epoch {epoch}; training stopped and {kept}. "
        f"Lower optim.lr or the constraint weights{clip}.")


def _step(t: Trainer, step_opt: torch.optim.Optimizer, total: Tensor) -> None:
    """Backward, gradient clipping, optimizer and schedule step. While HYDRA's scores learn
    (``step_opt`` is not the model's optimizer) they follow the run's learning rate."""
    opt, sched, scaler, hydra = t.opt, t.sched, t.scaler, t.hydra
    step_opt.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    if t.cfg.optim.grad_clip:
        scaler.unscale_(step_opt)
        nn.utils.clip_grad_norm_(t.model.parameters() if step_opt is opt else
                                 step_opt.param_groups[0]["params"], t.cfg.optim.grad_clip)
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


def _loader(t: Trainer, epoch: int) -> DataLoader:
    """This rank's shuffled training batches of ``epoch`` (the order depends on seed and
    epoch only, so a resumed run sees the same batches)."""
    if t.sampler is not None:
        t.sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(t.cfg.seed * 100003 + epoch)
    return DataLoader(t.train_ds, t.per_rank_batch, shuffle=t.sampler is None,
                      sampler=t.sampler, generator=gen, num_workers=t.cfg.data.num_workers,
                      drop_last=False)


def train_epoch(t: Trainer, epoch: int, step_opt: torch.optim.Optimizer,
                loss_fn: LossFn) -> list[float]:
    """Train ``epoch`` with ``loss_fn`` (:func:`sstorch.training.objectives.training_loss`)
    and ``step_opt``; returns this rank's [loss·n, adversarial correct, n].

    Raises :class:`TrainingDiverged` at the first non-finite loss.
    """
    cfg, device = t.cfg, t.device
    t.model.train()
    sums = [0.0, 0.0, 0.0]  # loss·n, adversarial correct, n
    bar = tqdm(_loader(t, epoch), desc=f"epoch {epoch}/{cfg.epochs}", disable=not t.d.main,
               leave=False, dynamic_ncols=True, file=sys.stderr)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        scale = eps_scale(cfg, (epoch - 1) * t.steps_per_epoch + i, t.steps_per_epoch)
        with torch.autocast(device.type, dtype=t.amp_dtype, enabled=t.use_amp):
            loss, logits = loss_fn(cfg, t.model, x, y, t.core, scale, t.teacher)
        total = loss.float() + t.reg()  # the factor penalties (SVD-based) in float32
        if not torch.isfinite(total):
            raise _diverged(t, epoch, total)
        _step(t, step_opt, total)
        n = y.numel()
        sums[0] += loss.item() * n
        sums[1] += (logits.argmax(1) == y).sum().item()
        sums[2] += n
        bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", adv_acc=f"{sums[1] / sums[2]:.3f}")
    bar.close()
    return sums
