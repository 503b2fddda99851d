"""Config loading: defaults, YAML, dotted overrides, strict keys and types, validation rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sstorch.config import (
    AttackConfig,
    Config,
    ConfigError,
    ConstraintConfig,
    DataConfig,
    EvalConfig,
    MLPConfig,
    OptimConfig,
    PruneConfig,
    VGG16Config,
    ViTConfig,
    load_config,
)


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# Keys that only one architecture has: an override of one picks that architecture first.
ARCH_KEYS = {"width": "vgg16", "variant": "vgg16", "fc_hidden": "vgg16", "compression": "vgg16",
             "separable_groups": "vit", "patch_size": "vit", "embed_dim": "vit"}


def with_arch(item: str) -> list[str]:
    """``[item]``, preceded by ``model.name=<arch>`` when ``item`` sets an architecture's key."""
    key = item.split("=", 1)[0]
    arch = ARCH_KEYS.get(key.removeprefix("model.")) if key.startswith("model.") else None
    return [f"model.name={arch}", item] if arch else [item]


# ---------------------------------------------------------------------------------------------
# Defaults and loading


def test_defaults_validate() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.validate() is cfg
    assert cfg.model.hidden == [[32, 32], [32, 32]]
    assert cfg.attack.name == "pgd" and cfg.optim.name == "sgd"
    for section in (DataConfig(), MLPConfig(), VGG16Config(), ViTConfig(), AttackConfig(),
                    OptimConfig(), ConstraintConfig(), PruneConfig(), EvalConfig()):
        section.validate()  # raises on an invalid default


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = Config(), Config()
    a.model.hidden.append([4, 4])
    a.optim.milestones[0] = 0.1
    assert b.model.hidden == [[32, 32], [32, 32]]
    assert b.optim.milestones == [0.5, 0.75]


def test_yaml_sets_nested_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
name: my-run
epochs: 3
data:
  name: cifar10
  val_size: 0.1
model:
  name: vgg16
  structure: dense
  width: 0.25
attack:
  eps: 0.03
  steps: 7
optim:
  lr: 1.0e-3
  milestones: [10, 20]
""")
    cfg = load_config(path)
    assert cfg.name == "my-run" and cfg.epochs == 3
    assert cfg.data.name == "cifar10" and cfg.data.val_size == 0.1
    assert isinstance(cfg.model, VGG16Config) and cfg.model.structure == "dense"
    assert cfg.model.width == 0.25 and not cfg.model.separable
    assert cfg.attack.eps == 0.03 and cfg.attack.steps == 7
    assert cfg.optim.lr == 1e-3 and cfg.optim.milestones == [10, 20]
    # Untouched keys keep their defaults.
    assert cfg.data.batch_size == DataConfig().batch_size
    assert cfg.attack.step_size == AttackConfig().step_size


def test_empty_yaml_and_empty_section_give_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "model:\n", "b.yaml")) == Config()


def test_yaml_ints_become_floats_and_exponents_parse(tmp_path: Path) -> None:
    # PyYAML reads "1e-4" (no dot) as a string; float fields must still accept it.
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1e-4\nattack:\n  eps: 0\n"))
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.attack.eps == 0.0 and isinstance(cfg.attack.eps, float)


# ---------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(("item", "getter", "expected"), [
    ("epochs=3", lambda c: c.epochs, 3),
    ("optim.lr=1e-4", lambda c: c.optim.lr, 1e-4),
    ("optim.lr=0.25", lambda c: c.optim.lr, 0.25),
    ("attack.eps=0", lambda c: c.attack.eps, 0.0),
    ("attack.name=trades", lambda c: c.attack.name, "trades"),
    ("model.structure=dense", lambda c: c.model.structure, "dense"),
    ("model.rank=3", lambda c: c.model.rank, 3),
    ("data.augment=no", lambda c: c.data.augment, False),  # YAML 1.1 bool
    ("data.download=true", lambda c: c.data.download, True),
    ("model.hidden=[[16, 16], [8, 8]]", lambda c: c.model.hidden, [[16, 16], [8, 8]]),
    ("model.separable_groups=[mlp, attn, patch]", lambda c: c.model.separable_groups,
     ["mlp", "attn", "patch"]),
    ("data.train_subset=null", lambda c: c.data.train_subset, None),
    ("data.train_subset=100", lambda c: c.data.train_subset, 100),
    ("data.root=", lambda c: c.data.root, None),
    ("data.root=/tmp/x=y", lambda c: c.data.root, "/tmp/x=y"),  # split at the first '='
    ("optim.grad_clip=1", lambda c: c.optim.grad_clip, 1.0),
    ("model.compression=8", lambda c: c.model.compression, 8.0),
])
def test_dotted_override_values_parse_as_yaml(item: str, getter, expected) -> None:
    value = getter(load_config(None, with_arch(item)))
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_win_over_yaml_and_apply_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "epochs: 5\nattack:\n  eps: 0.2\n")
    cfg = load_config(path, ["attack.eps=0.05", "epochs=2", "epochs=4"])
    assert cfg.attack.eps == 0.05 and cfg.epochs == 4


def test_override_creates_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "epochs: 5\n")
    assert load_config(path, ["prune.target=0.5"]).prune.target == 0.5


@pytest.mark.parametrize("bad", ["epochs", "attack.eps", "  "])
def test_override_without_equals(bad: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, [bad])


def test_override_into_a_scalar_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        load_config(write(tmp_path, "epochs: 5\n"), ["epochs.x=3"])
    with pytest.raises(ConfigError, match="epochs must be int"):
        load_config(None, ["epochs.x=3"])


def test_override_into_a_section_left_empty_in_yaml(tmp_path: Path) -> None:
    # `model:` with nothing under it is YAML null; the loader treats it as "all defaults", so
    # an override into it must work too (bug: _set_dotted says "'model' is not a section").
    path = write(tmp_path, "model:\nepochs: 2\n")
    assert load_config(path).model == MLPConfig()
    assert load_config(path, ["model.name=vit"]).model.name == "vit"


@pytest.mark.parametrize("value", ["3", "[1, 2]", "text", "0", "false", "[]", "''"])
def test_section_given_a_scalar_is_an_error(value: str) -> None:
    # A section must be a mapping; a falsy scalar must not silently mean "defaults"
    # (bug: _build uses `value or {}`, so attack=0 / attack=false / attack=[] / '' pass).
    with pytest.raises(ConfigError, match=r"attack\.? must be a mapping"):
        load_config(None, [f"attack={value}"])


def test_section_error_names_the_section_cleanly() -> None:
    # Bug: the message reads "attack. must be a mapping" (the prefix keeps its trailing dot).
    with pytest.raises(ConfigError, match=r"^attack must be a mapping, got int"):
        load_config(None, ["attack=3"])


# ---------------------------------------------------------------------------------------------
# Unknown keys and types


@pytest.mark.parametrize(("item", "full", "close"), [
    ("attack.step=5", "attack.step", "attack.steps"),
    ("optim.lrr=0.1", "optim.lrr", "optim.lr"),
    ("epoch=3", "epoch", "epochs"),
    ("data.batchsize=8", "data.batchsize", "data.batch_size"),
    ("model.structur=dense", "model.structur", "model.structure"),
    ("model.hiden=[4]", "model.hiden", "model.hidden"),
])
def test_misspelled_key_names_full_key_and_suggests(item: str, full: str, close: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, with_arch(item))
    msg = str(info.value)
    assert repr(full) in msg
    assert f"did you mean '{close}'?" in msg


def test_unknown_key_in_yaml_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "constraints:\n  zzz_unrelated: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "'constraints.zzz_unrelated'" in msg
    assert "did you mean" not in msg
    for key in ("constraints.lambda_sparsity", "constraints.lambda_cond", "constraints.cond"):
        assert key in msg


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'train'.*valid keys: .*epochs"):
        load_config(write(tmp_path, "train:\n  epochs: 3\n"))


def assert_override_rejected(item: str) -> None:
    """The override ``key=value`` fails to load with a ConfigError that names ``key``."""
    key = item.split("=", 1)[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, with_arch(item))


@pytest.mark.parametrize("item", [
    "epochs=three", "epochs=2.5", "epochs=true", "attack.steps=1.0",
    "attack.eps=abc", "attack.eps=true", "attack.eps=[0.1]", "model.separable=1",
    "model.separable=yes please", "data.name=3", "model.hidden=5", "seed=null",
    "attack.eps=null", "data.train_subset=1.5",
])
def test_wrong_types_raise(item: str) -> None:
    assert_override_rejected(item)


@pytest.mark.parametrize("text", ["1: 2\n", "attack:\n  on: 2\n", "model:\n  null: 1\n"])
def test_non_string_keys_are_config_errors(tmp_path: Path, text: str) -> None:
    # YAML turns `1:`, `on:` (YAML 1.1 bool) and `null:` into non-str keys. Bug: difflib then
    # raises TypeError ("'int' object is not iterable") instead of a ConfigError.
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(write(tmp_path, text))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_to_dict_round_trips() -> None:
    cfg = load_config(None, ["attack.name=fgsm", "model.hidden=[[8, 8]]"])
    tree = cfg.to_dict()
    assert tree["attack"]["name"] == "fgsm" and tree["model"]["hidden"] == [[8, 8]]
    overrides = [f"{section}.{k}={v!r}" if isinstance(v, str) else f"{section}.{k}={v}"
                 for section, values in tree.items() if isinstance(values, dict)
                 for k, v in values.items() if v is not None]
    assert load_config(None, overrides) == cfg
    assert {f.name for f in dataclasses.fields(Config)} == set(tree)


# ---------------------------------------------------------------------------------------------
# Validation rules


@pytest.mark.parametrize(("item", "pattern"), [
    ("attack.eps=-0.1", r"attack\.eps must be .*-0\.1"),
    ("attack.steps=0", r"attack\.steps must be ≥ 1"),
    ("attack.step_size=0", r"attack\.step_size must be > 0"),
    ("attack.trades_beta=-1", r"attack\.trades_beta"),
    ("data.batch_size=0", r"data\.batch_size"),
    ("data.eval_batch_size=0", r"data\.eval_batch_size"),
    ("data.val_size=-1", r"data\.val_size"),
    ("data.train_subset=0", r"data\.train_subset"),
    ("data.test_subset=0", r"data\.test_subset"),
    ("optim.lr=0", r"optim\.lr must be > 0"),
    ("optim.lr=-0.1", r"optim\.lr must be > 0"),
    ("optim.weight_decay=-1e-4", r"optim\.weight_decay"),
    ("prune.target=1", r"prune\.target must be in \[0, 1\)"),
    ("prune.target=1.5", r"prune\.target must be in \[0, 1\)"),
    ("prune.target=-0.1", r"prune\.target must be in \[0, 1\)"),
    ("constraints.lambda_cond=-1", r"lambda_cond"),
    ("constraints.lambda_sparsity=-1", r"lambda_sparsity"),
    ("model.rank=0", r"model\.rank"),
    ("model.width=0", r"model\.width"),
    ("model.compression=0.5", r"model\.compression"),
    ("epochs=0", r"epochs must be ≥ 1"),
    ("eval.pgd_steps=0", r"eval\.pgd_steps"),
    ("eval.val_pgd_steps=0", r"eval\.val_pgd_steps"),
    ("eval.pgd_restarts=0", r"eval\.pgd_restarts"),
])
def test_validation_rules(item: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, with_arch(item))


@pytest.mark.parametrize("item", [
    "attack.eps=nan", "attack.eps=inf", "attack.step_size=nan", "optim.lr=nan",
    "optim.lr=inf", "model.width=nan", "model.compression=nan", "data.val_size=nan",
    "constraints.lambda_cond=nan", "attack.trades_beta=nan",
])
def test_non_finite_floats_rejected(item: str) -> None:
    # "nan"/"inf" arrive as strings and _coerce turns them into floats; every `x < 0` style
    # check is then False for NaN, so the bad value passes validation (bug).
    assert_override_rejected(item)


def test_eps_above_one_rejected_at_load() -> None:
    # Attacks work in the [0, 1] pixel box and refuse eps > 1 (sstorch.attacks.pgd._check): a config
    # with eps > 1 can never train, so it should fail at load, not at the first training step.
    with pytest.raises(ConfigError, match=r"attack\.eps"):
        load_config(None, ["attack.eps=1.5"])
    assert load_config(None, ["attack.eps=1"]).attack.eps == 1.0


def test_prune_epochs_ordered() -> None:
    with pytest.raises(ConfigError, match="end_epoch"):
        load_config(None, ["prune.start_epoch=3", "prune.end_epoch=2"])
    assert load_config(None, ["prune.start_epoch=2", "prune.end_epoch=2"]).prune.end_epoch == 2


@pytest.mark.parametrize(("item", "key", "choices"), [
    ("attack.name=cw", "attack.name", ["pgd", "trades", "fgsm", "none"]),
    ("optim.name=adam", "optim.name", ["sgd", "adamw"]),
    ("optim.schedule=linear", "optim.schedule", ["cosine", "multistep", "onecycle", "none"]),
    ("constraints.cond=kappa", "constraints.cond", ["logdet", "logkappa"]),
    ("constraints.sparsity=l0", "constraints.sparsity", ["l1", "tl1"]),
    ("model.variant=tiny", "model.variant", ["cifar", "imagenet"]),
    ("model.separable_groups=[mlp, conv]", "model.separable_groups",
     ["mlp", "attn", "patch", "head"]),
    ("device=tpu", "device", ["auto", "cpu", "cuda"]),
    ("amp_dtype=float8", "amp_dtype", ["float16", "bfloat16"]),
])
def test_unknown_choice_lists_choices(item: str, key: str, choices: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, with_arch(item))
    msg = str(info.value)
    assert key in msg and repr(item.split("=", 1)[1].strip("[]").split(", ")[-1]) in msg
    assert ", ".join(choices) in msg


@pytest.mark.parametrize("item", [
    "attack.eps=0", "attack.name=none", "prune.target=0.99", "data.val_size=0",
    "optim.weight_decay=0", "constraints.lambda_cond=0", "model.compression=1",
])
def test_boundary_values_are_valid(item: str) -> None:
    key, value = item.split("=")
    cfg = load_config(None, with_arch(item))
    got = cfg
    for part in key.split("."):
        got = getattr(got, part)
    assert str(got) == value or float(got) == float(value), (key, got)


def test_validation_applies_to_yaml_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"attack\.steps"):
        load_config(write(tmp_path, "attack:\n  steps: 0\n"))


# ---------------------------------------------------------------------------------------------
# File errors


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "run.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


@pytest.mark.parametrize("text", ["epochs: [1, 2\n", "a: b: c\n", "model:\n  name: mlp\n\tx: 1\n"])
def test_invalid_yaml_names_path(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, Exception)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------------
# Values that used to produce wrong runs or messages that did not name the key (issue 24)


def test_pruning_window_past_the_last_epoch_is_rejected() -> None:
    # It used to train an unpruned model, keep no best.safetensors and exit 0.
    with pytest.raises(ConfigError) as info:
        load_config(None, ["prune.target=0.5", "prune.start_epoch=3", "prune.end_epoch=5",
                           "epochs=2"])
    for key in ("prune.start_epoch=3", "prune.end_epoch=5", "epochs=2"):
        assert key in str(info.value)
    cfg = load_config(None, ["prune.target=0.5", "prune.start_epoch=1", "prune.end_epoch=2",
                             "epochs=2"])
    assert cfg.prune.end_epoch == cfg.epochs
    # without pruning the window is unused: the defaults stay valid for one epoch
    assert load_config(None, ["epochs=1", "prune.end_epoch=5"]).epochs == 1


@pytest.mark.parametrize(("item", "pattern"), [
    ("eval.n=0", r"eval\.n must be ≥ 1"),
    ("eval.n=-5", r"eval\.n must be ≥ 1"),
    ("model.hidden=[[0, 0]]", r"model\.hidden=\[\[0, 0\]\].*got \[0, 0\]"),
    ("model.hidden=[[16, 16], []]", r"model\.hidden=.*got \[\]"),
    ("model.hidden=[-3]", r"model\.hidden=.*got -3"),
    ("seed=1180591620717411303424", r"seed must be an integer in 0\.\.4294967295"),
    ("seed=-1", r"seed must be an integer in 0\.\."),
])
def test_values_that_produced_wrong_runs_name_their_key(item: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, with_arch(item))


def test_seed_and_hidden_boundaries_are_valid() -> None:
    cfg = load_config(None, ["seed=4294967295", "model.hidden=[[1, 1], 7]", "eval.n=1"])
    assert (cfg.seed, cfg.model.hidden, cfg.eval.n) == (2**32 - 1, [[1, 1], 7], 1)


def test_duplicate_yaml_keys_are_rejected_naming_the_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "epochs: 3\noptim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text and "duplicate key 'lr' at line 5 (first at line 3)" in text
    top = write(tmp_path, "epochs: 3\nseed: 1\nepochs: 4\n", "top.yaml")
    with pytest.raises(ConfigError, match=r"top\.yaml.*duplicate key 'epochs'"):
        load_config(top)
    # the same key in two sections is not a duplicate; YAML merge keys still work
    ok = write(tmp_path, "optim: {lr: 0.1}\nattack: {eps: 0.1}\ndata: &d {batch_size: 8}\n"
               "_unused: {<<: *d, eval_batch_size: 16}\n", "ok.yaml")
    with pytest.raises(ConfigError, match="unknown config key '_unused'"):
        load_config(ok)  # parsed fine: only the (deliberately) unknown section is refused


def test_paths_expand_home_and_environment_variables(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SSTORCH_TEST_RUNS", str(tmp_path / "runs"))
    cfg = load_config(None, ["data.root=~/data", "out_dir=$SSTORCH_TEST_RUNS/a",
                             "init_from=${SSTORCH_TEST_RUNS}/dense/best.safetensors"])
    assert cfg.data.root == str(tmp_path / "home" / "data")
    assert cfg.out_dir == str(tmp_path / "runs" / "a")
    assert cfg.init_from == str(tmp_path / "runs" / "dense" / "best.safetensors")
    yaml_file = write(tmp_path, "data:\n  root: ~/d2\n")
    assert load_config(yaml_file).data.root == str(tmp_path / "home" / "d2")
    monkeypatch.delenv("SSTORCH_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"data\.root=.*SSTORCH_TEST_UNSET is not set"):
        load_config(None, ["data.root=$SSTORCH_TEST_UNSET/data"])
