"""The whole run config (:class:`Config`), strict loading from YAML / dicts, ``key=value``
overrides, and the drift between a run's saved config and the current one."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from sstorch.config.model import MLPConfig, ModelConfig, migrate_model
from sstorch.config.sections import (
    AttackConfig,
    ConstraintConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    OptimConfig,
    PruneConfig,
)
from sstorch.config.yamlio import ConfigError, yaml_load
from sstorch.config.yamlio import choice as _choice
from sstorch.io.fsutil import expand_path

__all__ = ["MAX_SEED", "Config", "config_drift", "config_from_dict", "drift_text",
           "load_config"]

MAX_SEED = 2**32 - 1  # NumPy's seed range; torch takes it too


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
    model: ModelConfig = field(default_factory=MLPConfig)
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
        if (p.keep is not None or p.method != "magnitude") and m.structure != "dense":
            raise ConfigError("prune.keep and prune.method=hydra prune dense nn.Linear weights: "
                              "set model.structure=dense (separable factors use prune.target)")
        if p.enabled and p.end_epoch > self.epochs:
            raise ConfigError(
                f"the pruning window prune.start_epoch={p.start_epoch}..prune.end_epoch="
                f"{p.end_epoch} ends after the last epoch (epochs={self.epochs}): the model would "
                "never reach its pruning target and no best checkpoint would be kept; set "
                f"prune.end_epoch ≤ {self.epochs} or raise epochs")
        if p.enabled and m.structure not in ("dense", "separable"):
            raise ConfigError(f"pruning is for dense or separable models, not for "
                              f"model.structure={m.structure!r}")
        c = self.constraints
        if m.structure not in ("dense", "separable") and (c.lambda_sparsity > 0
                                                          or c.lambda_cond > 0):
            raise ConfigError(f"the constraints act on separable factors: set "
                              f"constraints.lambda_sparsity=0 and constraints.lambda_cond=0 for "
                              f"model.structure={m.structure!r}")
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
        if typ is ModelConfig:  # one class per architecture, picked by model.name
            value = migrate_model({} if value is None else value)
            if isinstance(value, dict):
                typ = ModelConfig.for_name(value.get("name", "mlp"))
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
    if isinstance(value, int) and not isinstance(value, bool):
        if int in allowed:
            return value
        if float in allowed:
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


def config_from_dict(tree: dict[str, Any], source: str = "config") -> Config:
    """A validated :class:`Config` from a dict such as ``Config.to_dict()`` (e.g. the config
    stored in a checkpoint's metadata), checked key by key as a YAML file is; legacy model
    keys are migrated (:func:`migrate_model`)."""
    try:
        return _build(Config, tree, "").validate()
    except ConfigError as exc:
        raise ConfigError(f"the config in {source} is not valid: {exc}") from exc


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
