"""Accuracy of the model being trained, clean and under PGD: the validation set after each
epoch, the test set at the end (``eval.*`` settings; ``sstorch eval`` does the full
evaluation)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sstorch.attacks import PGD
from sstorch.config import Config
from sstorch.training.distributed import _all_sum, _Dist, _shard
from sstorch.training.setup import subset

__all__ = ["evaluate", "final_attack", "final_loader", "val_attack", "val_loader"]


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


def val_loader(cfg: Config, val_ds: Dataset | None, d: _Dist) -> DataLoader | None:
    """This rank's share of the validation set; None without one (``data.val_size=0``)."""
    if val_ds is None or len(val_ds) == 0:
        return None
    return DataLoader(_shard(val_ds, d), cfg.data.eval_batch_size,
                      num_workers=cfg.data.num_workers)


def val_attack(cfg: Config) -> PGD | None:
    """PGD with ``eval.val_pgd_steps`` steps at the training ε; None when ε = 0."""
    a = cfg.attack
    return PGD(a.eps, a.step_size, cfg.eval.val_pgd_steps) if a.eps > 0 else None


def final_loader(cfg: Config, test_ds: Dataset, d: _Dist) -> DataLoader:
    """This rank's share of the test set (its first ``eval.n`` images when set)."""
    if cfg.eval.n is not None:
        return DataLoader(_shard(subset(test_ds, cfg.eval.n), d), cfg.data.eval_batch_size)
    return DataLoader(_shard(test_ds, d), cfg.data.eval_batch_size,
                      num_workers=cfg.data.num_workers)


def final_attack(cfg: Config) -> PGD | None:
    """PGD with ``eval.pgd_steps`` steps and ``eval.pgd_restarts`` restarts; None when ε = 0."""
    a = cfg.attack
    return (PGD(a.eps, a.step_size, cfg.eval.pgd_steps, restarts=cfg.eval.pgd_restarts)
            if a.eps > 0 else None)
