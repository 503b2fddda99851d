"""Run configuration: typed dataclasses, strict YAML loading and ``key=value`` overrides.

A config is YAML whose sections mirror :class:`Config`. Every key is checked: a misspelled or
unknown key is an error naming the key (with the closest valid one), never silently ignored.
Overrides from the command line use dotted keys: ``--set train.epochs=3 optim.lr=0.05``.
"""

from sstorch.config import sections as _sections
from sstorch.config.load import (
    MAX_SEED,
    Config,
    config_drift,
    config_from_dict,
    drift_text,
    load_config,
)
from sstorch.config.model import (
    MODEL_CONFIGS,
    STRUCTURES,
    MLPConfig,
    ModelConfig,
    VGG16Config,
    ViTConfig,
    migrate_model,
)
from sstorch.config.sections import *  # noqa: F403  (the section classes: sections.__all__)
from sstorch.config.yamlio import ConfigError, yaml_load

__all__ = [
    "MAX_SEED",
    "MODEL_CONFIGS",
    "STRUCTURES",
    "Config",
    "ConfigError",
    "MLPConfig",
    "ModelConfig",
    "VGG16Config",
    "ViTConfig",
    "config_drift",
    "config_from_dict",
    "drift_text",
    "load_config",
    "migrate_model",
    "yaml_load",
    *_sections.__all__,
]
