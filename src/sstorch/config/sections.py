"""The config sections other than ``model``: data, attack, optim, constraints, prune, distill,
eval. Each checks its own values in ``validate`` (ConfigError naming the key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sstorch.config.yamlio import ConfigError
from sstorch.config.yamlio import choice as _choice

__all__ = ["AttackConfig", "ConstraintConfig", "DataConfig", "DistillConfig", "EvalConfig",
           "OptimConfig", "PruneConfig"]


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None
    download: bool = False
    val_size: float | None = None  # examples (≥ 1), a fraction (< 1), None = dataset default
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: bool = True
    num_workers: int = 0
    train_subset: int | None = None  # use only the first N training examples (smoke runs)
    test_subset: int | None = None

    def validate(self) -> None:
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"data.batch_size and data.eval_batch_size must be ≥ 1, got "
                              f"{self.batch_size} and {self.eval_batch_size}")
        if self.val_size is not None and self.val_size < 0:
            raise ConfigError(f"data.val_size must be ≥ 0, got {self.val_size}")
        for k in ("train_subset", "test_subset"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ConfigError(f"data.{k} must be ≥ 1 or null, got {v}")


@dataclass
class AttackConfig:
    """The training-time adversary (L∞)."""

    name: str = "pgd"  # pgd (Madry), trades, fgsm (random start, "fast AT"), none
    eps: float = 0.1
    step_size: float = 0.02
    steps: int = 10
    random_start: bool = True
    trades_beta: float = 6.0
    # ε (and the step size with it) ramps linearly from 0 over this many epochs, by step; 0 =
    # full ε from the first step. Default 1: without it a tiny model trained adversarially from
    # scratch can settle on the constant classifier (seed 2 of the 300x separable MLP did, in
    # the first paper sweep; docs/results.md, "Why the warm-up").
    eps_warmup_epochs: float = 1.0

    def validate(self) -> None:
        _choice(self.name, ("pgd", "trades", "fgsm", "none"), "attack.name")
        if not self.eps_warmup_epochs >= 0:
            raise ConfigError(f"attack.eps_warmup_epochs must be ≥ 0, got "
                              f"{self.eps_warmup_epochs}")
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"attack.eps must be in [0, 1] (pixel scale), got {self.eps}")
        if self.steps < 1:
            raise ConfigError(f"attack.steps must be ≥ 1, got {self.steps}")
        if not self.step_size > 0:
            raise ConfigError(f"attack.step_size must be > 0, got {self.step_size}")
        if self.trades_beta < 0:
            raise ConfigError(f"attack.trades_beta must be ≥ 0, got {self.trades_beta}")


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd, adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine, multistep, onecycle, none
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs
    gamma: float = 0.1
    grad_clip: float | None = None

    def validate(self) -> None:
        _choice(self.name, ("sgd", "adamw"), "optim.name")
        _choice(self.schedule, ("cosine", "multistep", "onecycle", "none"), "optim.schedule")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be ≥ 0, got {self.weight_decay}")


@dataclass
class ConstraintConfig:
    # Defaults: the weights validated for the rank-1 separable MLP on Fashion-MNIST (a grid on
    # the validation split, docs/results.md). The earlier defaults (1e-5, 1e-3) cost 6.85 points
    # of AutoAttack accuracy there. Penalties sum over Kronecker terms, so higher ranks want
    # smaller weights (rank 44 validated at 1e-5, 1e-5); tune with benchmarks/tune.py.
    lambda_sparsity: float = 1e-4
    lambda_cond: float = 1e-4
    sparsity: str = "l1"  # l1, tl1
    cond: str = "logdet"  # logdet, logkappa
    a: float = 1.0  # transformed-L1 shape

    def validate(self) -> None:
        if self.lambda_sparsity < 0 or self.lambda_cond < 0:
            raise ConfigError("constraints.lambda_sparsity and lambda_cond must be ≥ 0")
        _choice(self.sparsity, ("l1", "tl1"), "constraints.sparsity")
        _choice(self.cond, ("logdet", "logkappa"), "constraints.cond")


@dataclass
class PruneConfig:
    """Pruning from ``start_epoch`` to ``end_epoch``; later epochs fine-tune.

    Separable models prune factor entries by magnitude (``target`` per factor, a linear ramp);
    dense models prune ``nn.Linear`` weights (sstorch.pruning): by global magnitude with a
    geometric ramp of the weights kept, or with HYDRA's learned scores.
    """

    target: float = 0.0  # final fraction of zeros (per factor / of the Linear weights); 0 = off
    keep: int | None = None  # dense only: Linear weights kept at the end (overrides target)
    # dense only: magnitude (global |w|, ramped) or hydra (scores learned by the adversarial
    # loss in start_epoch..end_epoch with the weights frozen, then fine-tuning)
    method: str = "magnitude"
    start_epoch: int = 1
    end_epoch: int = 1  # target reached at the end of this epoch; later epochs fine-tune

    @property
    def enabled(self) -> bool:
        return self.target > 0 or self.keep is not None

    def validate(self) -> None:
        if not 0 <= self.target < 1:
            raise ConfigError(f"prune.target must be in [0, 1), got {self.target}")
        if self.keep is not None and self.keep < 1:
            raise ConfigError(f"prune.keep must be ≥ 1 or null, got {self.keep}")
        _choice(self.method, ("magnitude", "hydra"), "prune.method")
        if self.method == "hydra" and not (self.target > 0 or self.keep is not None):
            raise ConfigError("prune.method=hydra needs prune.keep or prune.target")
        if self.end_epoch < self.start_epoch:
            raise ConfigError("prune.end_epoch must be ≥ prune.start_epoch")


@dataclass
class DistillConfig:
    """Robust distillation from a trained teacher run (:mod:`sstorch.training.distill`); off when
    ``teacher`` is null. The inner maximisation uses ``attack.eps``, ``step_size`` and ``steps``.

    * ``rslad`` (Zi et al. 2021): ``x'`` maximises ``KL(T(x) ‖ S(x'))``; the loss is
      ``α·KL(T(x) ‖ S(x')) + (1 − α)·KL(T(x) ‖ S(x))`` (the paper's α = 5/6).
    * ``ard`` (Goldblum et al. 2020): ``x'`` maximises ``CE(S(x'), y)``; the loss is
      ``α·τ²·KL(T(x)/τ ‖ S(x')/τ) + (1 − α)·CE(S(x), y)``.
    """

    teacher: str | None = None  # a run directory (its best checkpoint) or a .safetensors file
    method: str = "rslad"  # rslad, ard
    alpha: float = 5 / 6
    temperature: float = 1.0

    def validate(self) -> None:
        _choice(self.method, ("rslad", "ard"), "distill.method")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        if self.teacher is not None and not str(self.teacher).strip():
            raise ConfigError("distill.teacher must be a run directory or checkpoint, or null")


@dataclass
class EvalConfig:
    pgd_steps: int = 20
    pgd_restarts: int = 1
    n: int | None = None  # test examples for the final evaluation (None = the full test set)
    val_pgd_steps: int = 10

    def validate(self) -> None:
        if self.pgd_steps < 1 or self.val_pgd_steps < 1 or self.pgd_restarts < 1:
            raise ConfigError("eval.pgd_steps, eval.val_pgd_steps, eval.pgd_restarts must be ≥ 1")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"eval.n must be ≥ 1 (test examples) or null for the whole test "
                              f"set, got {self.n}")
