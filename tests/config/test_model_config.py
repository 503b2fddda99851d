"""The ``model`` section: one class per architecture, ``structure`` as the one choice of layer
structure, and legacy configs (``separable`` + ``baseline`` + every architecture's keys)
migrated so that old run directories and checkpoints keep loading unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sstorch.config import (
    ConfigError,
    MLPConfig,
    ModelConfig,
    VGG16Config,
    ViTConfig,
    config_drift,
    config_from_dict,
    load_config,
    migrate_model,
)

ROOT = Path(__file__).resolve().parents[2]

# A model section as every config.yaml written before model.structure has it: all three
# architectures' keys, and the structure in two keys.
LEGACY_DUMP = {
    "name": "mlp", "separable": False, "hidden": [[8, 8], [8, 8]], "rank": 1,
    "compression": None, "width": 1.0, "variant": "cifar", "fc_hidden": 512, "patch_size": 4,
    "embed_dim": 192, "depth": 12, "num_heads": 3, "separable_groups": ["mlp"],
    "separate_head": False, "dropout": 0.0, "baseline": "tucker", "baseline_rank": 0.25,
}


@pytest.mark.parametrize(("name", "cls"), [("mlp", MLPConfig), ("vgg16", VGG16Config),
                                           ("vit", ViTConfig)])
def test_each_architecture_has_its_own_class_and_keys(name, cls):
    cfg = load_config(None, [f"model.name={name}"])
    assert type(cfg.model) is cls and cfg.model.name == name
    keys = set(cfg.to_dict()["model"])
    assert {"name", "structure", "rank", "dropout"} <= keys
    others = {f.name for c in (MLPConfig, VGG16Config, ViTConfig) if c is not cls
              for f in dataclasses.fields(c)} - {f.name for f in dataclasses.fields(cls)}
    assert others and not keys & others  # no key of another architecture is dumped


@pytest.mark.parametrize(("overrides", "key"), [
    (["model.name=vgg16", "model.hidden=[[4, 4]]"], "model.hidden"),
    (["model.embed_dim=96"], "model.embed_dim"),
    (["model.name=vit", "model.width=0.5"], "model.width"),
])
def test_a_key_of_another_architecture_is_an_error_naming_it(overrides, key):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'.*valid keys: "):
        load_config(None, overrides)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ConfigError, match=r"model.name='resnet' is not one of: mlp, vgg16, vit"):
        load_config(None, ["model.name=resnet"])


@pytest.mark.parametrize(("structure", "rank", "ok"), [
    ("separable", 2, True), ("separable", 0.5, False), ("dense", 1, True),
    ("lowrank", 3, True), ("lowrank", 0.5, False), ("tucker", 0.25, True), ("tt", 2, True),
    ("tucker", 2.5, False), ("tt", 0, False),
])
def test_rank_is_checked_for_the_structure(structure, rank, ok):
    sets = [f"model.structure={structure}", f"model.rank={rank}"]
    if structure not in ("dense", "separable"):
        sets += ["constraints.lambda_sparsity=0", "constraints.lambda_cond=0"]
    if ok:
        cfg = load_config(None, sets)
        assert cfg.model.rank == rank and type(cfg.model.rank) is type(rank)
    else:
        with pytest.raises(ConfigError, match=r"model\.rank must be an int ≥ 1"):
            load_config(None, sets)


def test_separable_is_derived_from_structure():
    assert load_config().model.separable  # the default: the separable MLP
    assert not load_config(None, ["model.structure=dense"]).model.separable
    with pytest.raises(ConfigError, match=r"model\.structure='kron' is not one of: dense, "):
        load_config(None, ["model.structure=kron"])


@pytest.mark.parametrize(("legacy", "structure", "rank"), [
    ({"separable": True, "rank": 2}, "separable", 2),
    ({"separable": False}, "dense", 1),
    ({"separable": False, "baseline": "none"}, "dense", 1),
    ({"separable": False, "baseline": "lowrank", "baseline_rank": 3}, "lowrank", 3),
    ({"separable": False, "baseline": "tt", "baseline_rank": 0.5, "rank": 1}, "tt", 0.5),
])
def test_legacy_structure_keys_are_migrated(legacy, structure, rank):
    out = migrate_model({"name": "mlp", **legacy})
    assert out["structure"] == structure and out.get("rank", 1) == rank
    assert not {"separable", "baseline", "baseline_rank"} & set(out)


def test_a_legacy_dump_loads_as_the_current_config(tmp_path):
    old = {"model": LEGACY_DUMP, "constraints": {"lambda_sparsity": 0, "lambda_cond": 0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.model == MLPConfig(structure="tucker", rank=0.25, hidden=[[8, 8], [8, 8]])
    assert config_from_dict(old).model == cfg.model
    now = load_config(None, ["model.structure=tucker", "model.rank=0.25",
                             "model.hidden=[[8, 8], [8, 8]]", "constraints.lambda_sparsity=0",
                             "constraints.lambda_cond=0"])
    assert config_drift(tmp_path / "config.yaml", now) == {}  # an old run is not stale


@pytest.mark.parametrize(("model", "match"), [
    ({"structure": "dense", "separable": False}, "give only model.structure"),
    ({"separable": True, "baseline": "tt"}, "set model.separable=false"),
    ({"separable": "yes"}, "model.separable must be bool"),
    ({"separable": False, "baseline": 3}, "model.baseline must be str"),
])
def test_legacy_keys_that_contradict_are_errors(model, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"model={yaml.safe_dump(model, default_flow_style=True).strip()}"])


def test_every_shipped_config_uses_the_current_keys():
    stale = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("configs/**/*.yaml"))
             if p.name != "sweep.yaml"
             and any(k in (yaml.safe_load(p.read_text()) or {}).get("model", {})
                     for k in ("separable", "baseline", "baseline_rank"))]
    assert stale == []


def test_config_from_dict_is_as_strict_as_yaml():
    tree = load_config(None, ["model.name=vit", "model.depth=2"]).to_dict()
    assert config_from_dict(tree).model == ViTConfig(depth=2)
    with pytest.raises(ConfigError, match=r"in the checkpoint.*unknown config key 'model.hiden'"):
        config_from_dict({"model": {"hiden": [4]}}, "the checkpoint")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict({"model": 3})


def test_the_base_class_is_not_a_config_of_its_own():
    with pytest.raises(ConfigError, match="needs a MLPConfig, got ModelConfig"):
        ModelConfig().validate()
