"""Strict YAML for configs: duplicate keys refused, errors as :class:`ConfigError`."""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["ConfigError", "choice", "yaml_load"]


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


def choice(value: str, choices: tuple[str, ...], key: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(choices)}")


