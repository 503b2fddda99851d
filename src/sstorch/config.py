"""Run configuration: typed dataclasses, strict YAML loading and ``key=value`` overrides.

A config is YAML whose sections mirror :class:`Config`. Every key is checked: a misspelled or
unknown key is an error naming the key (with the closest valid one), never silently ignored.
Overrides from the command line use dotted keys: ``--set train.epochs=3 optim.lr=0.05``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from sstorch.io.fsutil import expand_path

__all__ = [
    "MAX_SEED",
    "AttackConfig",
    "Config",
    "ConfigError",
    "ConstraintConfig",
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "PruneConfig",
    "config_drift",
    "load_config",
    "yaml_load",
]

MAX_SEED = 2**32 - 1  # NumPy's seed range; torch takes it too


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the
    last one silently, so a pasted line could override a setting unnoticed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first != line:
                raise ConfigError(f"duplicate key {key!r} at line {line} (first at line "
                                  f"{first}); keep only one of them")
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str, source: str = "YAML") -> Any:
    """``yaml.safe_load`` that rejects duplicate mapping keys (ConfigError naming ``source``)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(choices)}")


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
class ModelConfig:
    name: str = "mlp"
    separable: bool = True
    # mlp: hidden layer shapes; a separable MLP keeps them as tensors (e.g. [[32, 32], [32, 32]]),
    # a dense one uses their products as widths.
    hidden: list = field(default_factory=lambda: [[32, 32], [32, 32]])
    rank: int = 1
    compression: float | None = None  # per-layer target for surgery (vgg16 / vit)
    # vgg16
    width: float = 1.0  # channel multiplier (1/8 for CPU-sized runs)
    variant: str = "cifar"  # cifar: BN + FC head on the 512×1×1 map; imagenet: 512·7·7→4096→4096
    fc_hidden: int = 512  # CIFAR head width
    # vit
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    separable_groups: list = field(default_factory=lambda: ["mlp"])  # mlp, attn, patch, head
    separate_head: bool = False  # mlp / vgg16: also factorize the classifier layer
    dropout: float = 0.0
    # Comparison layers for a dense mlp (sstorch.layers.lowrank, .tensorized): none, lowrank
    # (W = AB), tucker or tt (tensorly-torch). baseline_rank: lowrank's int rank r; tucker / tt:
    # an int rank ≥ 1 or a fraction < 1 of each layer's dense parameters.
    baseline: str = "none"
    baseline_rank: float = 1

    def validate(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"model.rank must be ≥ 1, got {self.rank}")
        for h in self.hidden:
            dims = h if isinstance(h, list) else [h]
            if not dims or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                   for v in dims):
                raise ConfigError(f"model.hidden={self.hidden!r}: every hidden shape must be a "
                                  f"size ≥ 1 or a non-empty list of sizes ≥ 1 (e.g. [[32, 32]]), "
                                  f"got {h!r}")
        _choice(self.baseline, ("none", "lowrank", "tucker", "tt"), "model.baseline")
        if self.baseline != "none":
            if self.name != "mlp":
                raise ConfigError(f"model.baseline={self.baseline!r} is implemented for the mlp "
                                  f"only, got model.name={self.name!r}")
            if self.separable:
                raise ConfigError(f"model.baseline={self.baseline!r} replaces the dense layers: "
                                  "set model.separable=false")
            r = self.baseline_rank
            if self.baseline == "lowrank" and not (r >= 1 and r == int(r)):
                raise ConfigError(f"model.baseline_rank must be an int ≥ 1 for lowrank, got {r}")
            if not (0 < r < 1 or (r >= 1 and r == int(r))):
                raise ConfigError(f"model.baseline_rank must be an int ≥ 1 or a fraction in "
                                  f"(0, 1), got {r}")
        if self.compression is not None and self.compression < 1:
            raise ConfigError(f"model.compression must be ≥ 1, got {self.compression}")
        if self.width <= 0:
            raise ConfigError(f"model.width must be > 0, got {self.width}")
        _choice(self.variant, ("cifar", "imagenet"), "model.variant")
        for g in self.separable_groups:
            _choice(g, ("mlp", "attn", "patch", "head"), "model.separable_groups[]")


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


@dataclass
class Config:
    name: str = "sep-mlp-fashion-mnist"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = True  # mixed precision on CUDA only
    amp_dtype: str = "float16"  # float16 (with loss scaling) or bfloat16 (no scaling needed)
    channels_last: bool = False  # convolutions in NHWC on CUDA (faster with AMP on tensor cores)
    epochs: int = 20
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    constraints: ConstraintConfig = field(default_factory=ConstraintConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # A run directory or .safetensors checkpoint whose model weights initialize the model
    # (not the optimizer or the epoch), e.g. the trained dense run that a pruning run starts from.
    init_from: str | None = None

    def validate(self) -> Config:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be ≥ 1, got {self.epochs}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in 0..{MAX_SEED} (2**32 - 1), got "
                              f"{self.seed}")
        for key, section, attr in (("data.root", self.data, "root"),
                                   ("out_dir", self, "out_dir"), ("init_from", self, "init_from")):
            value = getattr(section, attr)
            if value is not None and str(value).strip():
                try:
                    setattr(section, attr, expand_path(value, key))
                except ValueError as exc:
                    raise ConfigError(str(exc)) from exc
        _choice(self.device, ("auto", "cpu", "cuda"), "device")
        _choice(self.amp_dtype, ("float16", "bfloat16"), "amp_dtype")
        for f in fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v.validate()
        p, m = self.prune, self.model
        if (p.keep is not None or p.method != "magnitude") and m.separable:
            raise ConfigError("prune.keep and prune.method=hydra prune dense nn.Linear weights: "
                              "set model.separable=false (separable factors use prune.target)")
        if p.enabled and p.end_epoch > self.epochs:
            raise ConfigError(
                f"the pruning window prune.start_epoch={p.start_epoch}..prune.end_epoch="
                f"{p.end_epoch} ends after the last epoch (epochs={self.epochs}): the model would "
                "never reach its pruning target and no best checkpoint would be kept; set "
                f"prune.end_epoch ≤ {self.epochs} or raise epochs")
        if p.enabled and m.baseline != "none":
            raise ConfigError(f"pruning is for dense or separable models, not for "
                              f"model.baseline={m.baseline!r}")
        c = self.constraints
        if m.baseline != "none" and (c.lambda_sparsity > 0 or c.lambda_cond > 0):
            raise ConfigError(f"the constraints act on separable factors: set "
                              f"constraints.lambda_sparsity=0 and constraints.lambda_cond=0 for "
                              f"model.baseline={m.baseline!r}")
        if self.distill.teacher is not None and self.attack.name != "pgd":
            raise ConfigError(f"distill.teacher replaces the training adversary: set "
                              f"attack.name=pgd (its eps, step_size and steps shape the inner "
                              f"maximisation), got attack.name={self.attack.name!r}")
        if self.init_from is not None and not str(self.init_from).strip():
            raise ConfigError("init_from must be a run directory or checkpoint path, or null")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got "
                          f"{type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint} (valid keys: "
                              f"{', '.join(prefix + n for n in names)})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, {} if value is None else value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, typ, full)
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check a scalar against its annotation, allowing int → float and None for optionals."""
    args = getattr(typ, "__args__", None)
    allowed = set(args) if args else {typ}
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must not be null")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in allowed and isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    for t in allowed - {type(None)}:
        origin = getattr(t, "__origin__", t)
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin not in (bool, int) and isinstance(origin, type) and isinstance(value, origin):
            return value
    names = "/".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")


def _set_dotted(tree: dict[str, Any], dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like key=value, e.g. train.epochs=3")
    key, raw = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        if node.get(p) is None:  # absent, or a section left empty in the YAML
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = yaml_load(raw, f"override {key!r}") if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            tree = yaml_load(p.read_text(encoding="utf-8"), f"config file {str(p)!r}") or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start}); is it a config file?") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    for item in overrides or []:
        _set_dotted(tree, item)
    return _build(Config, tree, "").validate()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_drift(saved: str | Path, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in the saved run config, value in cfg)}`` for every difference.

    ``saved`` is a run's ``config.yaml``; it goes through :func:`load_config` too, so keys added
    to sstorch since it was written compare at their defaults. A run whose config drifted
    belongs to another recipe. An unreadable file is one entry, ``"config.yaml"``.
    """
    try:
        old = _flatten(dataclasses.asdict(load_config(saved)))
    except (ConfigError, ValueError, OSError) as exc:
        return {"config.yaml": (f"unreadable ({exc})", "the current config")}
    new = _flatten(dataclasses.asdict(cfg))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def drift_text(drift: dict[str, tuple[Any, Any]]) -> str:
    """``"a.b: 1 → 2, c: 'x' → 'y'"``."""
    return ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in drift.items())
