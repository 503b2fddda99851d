"""End-to-end tests of ``sstorch train`` (:mod:`sstorch.training.loop`, :mod:`sstorch.cli`).

Every run uses scikit-learn's bundled 8×8 digits and a one-hidden-layer separable MLP
``(8, 8) → (4, 4) → 10`` on small subsets, so the whole file stays fast on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import sstorch.training.loop as train_mod
import sstorch.training.objectives as objectives_mod
import sstorch.training.records as records_mod
import sstorch.training.validate as validate_mod
from sstorch import attacks
from sstorch.attacks import FGSM, PGD, trades_adversary
from sstorch.cli import main
from sstorch.config import ConfigError, MLPConfig, load_config
from sstorch.data import DATASET_INFO, get_dataset
from sstorch.io.checkpoint import CheckpointError, load_checkpoint, load_weights, read_metadata
from sstorch.models import build_model
from sstorch.training.loop import TrainingDiverged, evaluate, train

LAYER = "net.1"  # the separable hidden layer of the MLP
N_FACTOR_ENTRIES = 8 * 4 + 8 * 4  # factors U1 (4×8) and U2 (4×8)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- helpers


def _overrides(out_dir: Path, name: str = "run", **kw: object) -> list[str]:
    """Dotted overrides of a tiny digits run; ``kw`` replaces or adds keys ('__' for '.')."""
    base = {
        "data.name": "digits", "model.hidden": "[[4,4]]", "device": "cpu",
        "out_dir": str(out_dir), "name": name, "epochs": 1,
        "data.train_subset": 128, "data.val_size": 64, "data.test_subset": 64,
        "data.batch_size": 64, "data.eval_batch_size": 256,
        "attack.eps": 0.1, "attack.step_size": 0.05, "attack.steps": 2,
        "eval.pgd_steps": 2, "eval.val_pgd_steps": 2,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(out_dir: Path, name: str = "run", **kw: object):
    return load_config(None, _overrides(out_dir, name, **kw))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    ds = get_dataset("digits", train=False)
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.tensor(ys)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    info = DATASET_INFO["digits"]
    return build_model(MLPConfig(hidden=[[4, 4]]), info.num_classes, info.image_shape,
                       info.mean, info.std)


def _assert_in_box(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


@pytest.fixture
def spy_attacks(monkeypatch):
    """Record every attack the training loop runs: (kind, eps, steps, x, x_adv)."""
    calls: list[tuple[str, float, int, torch.Tensor, torch.Tensor]] = []

    class SpyPGD(attacks.PGD):
        def __call__(self, model, images, labels):
            out = super().__call__(model, images, labels)
            calls.append(("pgd", self.eps, self.steps, images.detach().clone(), out))
            return out

    class SpyFGSM(attacks.FGSM):
        def __call__(self, model, images, labels):
            out = super().__call__(model, images, labels)
            calls.append(("fgsm", self.eps, 1, images.detach().clone(), out))
            return out

    def spy_trades(model, images, eps, step_size, steps):
        out = attacks.trades_adversary(model, images, eps, step_size, steps)
        calls.append(("trades", eps, steps, images.detach().clone(), out))
        return out

    monkeypatch.setattr(objectives_mod, "PGD", SpyPGD)  # training
    monkeypatch.setattr(objectives_mod, "FGSM", SpyFGSM)
    monkeypatch.setattr(objectives_mod, "trades_adversary", spy_trades)
    monkeypatch.setattr(validate_mod, "PGD", SpyPGD)  # validation and test
    return calls


@pytest.fixture
def nan_after(monkeypatch):
    """``nan_after(k)``: the training loss becomes NaN from the (k+1)-th step on."""

    def arm(k: int) -> None:
        original = train_mod.training_loss
        count = [0]

        def patched(*args, **kwargs):
            loss, logits = original(*args, **kwargs)
            count[0] += 1
            return (loss * float("nan") if count[0] > k else loss), logits

        monkeypatch.setattr(train_mod, "training_loss", patched)

    return arm


@pytest.fixture
def deterministic(monkeypatch):
    """``deterministic=true`` switches PyTorch's process-global flag on: switch it back."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """A clean-trained digits MLP (5 epochs, AdamW): the accuracy and evaluate() tests use it."""
    out = tmp_path_factory.mktemp("clean")
    cfg = _cfg(out, "clean", epochs=5, attack__name="none", optim__name="adamw",
               optim__lr=1e-2, data__train_subset="null", data__val_size=144,
               data__test_subset="null")
    return train(cfg, log=lambda msg: None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 1-epoch PGD run; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("tiny")
    return train(_cfg(out, "tiny"), log=lambda msg: None)


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


# --------------------------------------------------------------------------- end to end


def test_pgd_run_with_constraints_and_pruning_writes_everything(tmp_path, spy_attacks):
    cfg = _cfg(tmp_path, "e2e", epochs=3, data__train_subset=192, attack__steps=3,
               constraints__lambda_sparsity=1e-4, constraints__lambda_cond=1e-2,
               prune__target=0.5, prune__start_epoch=1, prune__end_epoch=2)
    lines: list[str] = []
    run_dir = train(cfg, log=lines.append)

    assert run_dir == tmp_path / "e2e"
    assert load_config(run_dir / "config.yaml") == cfg

    rows = _rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for col in ("train_loss", "train_adv_acc", "val_clean_acc", "val_robust_acc", "lr",
                "reg_sparsity", "reg_cond", f"kappa/{LAYER}", f"nnz/{LAYER}"):
        assert col in rows[0], col
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and float(r["train_loss"]) > 0
        assert 0 <= float(r["val_robust_acc"]) <= float(r["val_clean_acc"]) <= 1
        assert float(r["reg_sparsity"]) > 0 and float(r["reg_cond"]) > 0  # both constraints on
        assert float(r[f"kappa/{LAYER}"]) >= 1
    # pruning ramps 25 % → 50 % over epochs 1–2, then holds
    nnz = [int(r[f"nnz/{LAYER}"]) for r in rows]
    assert nnz == [N_FACTOR_ENTRIES * 3 // 4, N_FACTOR_ENTRIES // 2, N_FACTOR_ENTRIES // 2]

    assert (run_dir / "best.safetensors").is_file()
    assert read_metadata(run_dir / "last.safetensors")["epoch"] == 3
    assert 1 <= read_metadata(run_dir / "best.safetensors")["epoch"] <= 3
    last = load_weights(run_dir / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in last.values())
    for k in range(2):  # masked entries are exactly zero in the stored factors
        assert (last[f"{LAYER}.factors.{k}"] == 0).sum() >= 16
        assert torch.equal(last[f"{LAYER}.factors.{k}"] * last[f"{LAYER}.mask_{k}"],
                           last[f"{LAYER}.factors.{k}"])

    s = _summary(run_dir)
    for key in ("test_clean_acc", "test_pgd2_acc", "test_n", "params", "nnz", "compression",
                "layers", "eps"):
        assert key in s, key
    assert s["test_n"] == 64
    assert s["machine"].startswith("CPU ") and "torch " in s["machine"]  # where it trained
    assert s["code"].startswith("sstorch ")  # which code trained it
    assert 0 <= s["test_pgd2_acc"] <= s["test_clean_acc"] <= 1
    assert s["params"] == 250 and s["compression"] > 4
    assert s["nnz"] < s["params"]

    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events file under tb/"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert "train_loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3]

    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert any(line.startswith("test:") for line in lines)

    # the training adversary is PGD with attack.steps=3 (evaluation uses 2 steps)
    train_calls = [c for c in spy_attacks if c[0] == "pgd" and c[2] == 3]
    assert len(train_calls) == 3 * 3  # 3 epochs × 3 batches of 64
    for _, eps, _, x, x_adv in spy_attacks:
        _assert_in_box(x, x_adv, eps)
    assert max((xa - x).abs().max().item() for _, _, _, x, xa in train_calls) > 0.05


def test_clean_training_beats_chance(clean_run):
    s = _summary(clean_run)
    assert s["test_n"] == 360  # the whole digits test split
    assert s["test_clean_acc"] > 0.5
    rows = _rows(clean_run)
    assert len(rows) == 5
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["train_adv_acc"]) > 0.5  # clean training accuracy (attack.name=none)


@pytest.mark.parametrize("attack", ["trades", "fgsm", "none"])
def test_each_training_attack_runs(tmp_path, spy_attacks, attack):
    run_dir = train(_cfg(tmp_path, attack, attack__name=attack, attack__step_size=0.125),
                    log=lambda msg: None)
    rows = _rows(run_dir)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert (run_dir / "last.safetensors").is_file() and (run_dir / "summary.json").is_file()
    kinds = [c[0] for c in spy_attacks]
    if attack == "none":
        assert "fgsm" not in kinds and "trades" not in kinds
    else:
        assert kinds.count(attack) == 2  # 128 training examples in batches of 64
        assert {"trades": "fgsm", "fgsm": "trades"}[attack] not in kinds
    for _, eps, _, x, x_adv in spy_attacks:
        _assert_in_box(x, x_adv, eps)


def test_eps_warmup_ramps_eps_and_step_size_linearly_by_step(tmp_path, spy_attacks):
    from sstorch.training.objectives import eps_scale

    cfg = _cfg(tmp_path, "warm", epochs=2, attack__steps=3, attack__eps_warmup_epochs=1.5)
    assert [eps_scale(cfg, s, 4) for s in (0, 2, 5, 6, 40)] == [1 / 6, 0.5, 1.0, 1.0, 1.0]
    train(cfg, log=lambda msg: None)
    # 128 training examples in batches of 64: 2 steps per epoch, warm-up over 3 steps
    eps = [c[1] for c in spy_attacks if c[0] == "pgd" and c[2] == 3]
    assert eps == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1])
    for _, e, _, x, x_adv in spy_attacks:
        _assert_in_box(x, x_adv, e)
    assert {c[1] for c in spy_attacks if c[2] != 3} == {0.1}  # validation/test: the full ε
    default = _cfg(tmp_path)  # default: one epoch of warm-up (the paper sweep's recipe)
    assert [eps_scale(default, s, 2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert eps_scale(_cfg(tmp_path, attack__eps_warmup_epochs=0), 0, 2) == 1.0  # 0: none
    with pytest.raises(ConfigError, match="eps_warmup_epochs must be ≥ 0"):
        _cfg(tmp_path, attack__eps_warmup_epochs=-1)


def test_attack_with_zero_eps_trains_clean_and_skips_robust_eval(tmp_path, spy_attacks):
    run_dir = train(_cfg(tmp_path, "eps0", attack__eps=0), log=lambda msg: None)
    assert spy_attacks == []
    assert math.isnan(float(_rows(run_dir)[0]["val_robust_acc"]))
    assert _summary(run_dir)["test_pgd2_acc"] is None


# --------------------------------------------------------------------------- resume


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a / "last.safetensors"), load_weights(b / "last.safetensors")
    assert sorted(wa) == sorted(wb)
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differing, f"weights differ after resume: {differing}"


_RESUME = dict(deterministic="true", epochs=2, data__train_subset=192,
               constraints__lambda_sparsity=1e-4, constraints__lambda_cond=1e-2,
               prune__target=0.5, prune__start_epoch=1, prune__end_epoch=2)
_TIMING = ("train_seconds", "epoch_seconds")


def test_resume_after_interruption_matches_straight_run(tmp_path, deterministic):
    """A run killed after epoch 1 and resumed equals the uninterrupted run, bit for bit."""
    straight = train(_cfg(tmp_path, "straight", **_RESUME), log=lambda msg: None)

    class Killed(Exception):
        pass

    def die_after_epoch_1(msg: str) -> None:
        if msg.startswith("epoch 1:"):
            raise Killed

    cfg = _cfg(tmp_path, "resumed", **_RESUME)
    with pytest.raises(Killed):
        train(cfg, log=die_after_epoch_1)
    assert read_metadata(tmp_path / "resumed" / "last.safetensors")["epoch"] == 1
    lines: list[str] = []
    resumed = train(cfg, resume=tmp_path / "resumed", log=lines.append)
    assert any("resumed" in line and "epoch 2" in line for line in lines)

    _assert_same_weights(straight, resumed)
    rows_a, rows_b = _rows(straight), _rows(resumed)
    assert [r["epoch"] for r in rows_b] == ["1", "2"]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in ra.items() if k not in _TIMING} == \
               {k: v for k, v in rb.items() if k not in _TIMING}
    sa, sb = _summary(straight), _summary(resumed)
    assert (sa["test_clean_acc"], sa["test_pgd2_acc"]) == (sb["test_clean_acc"],
                                                           sb["test_pgd2_acc"])


def test_resume_extends_a_finished_run_like_a_straight_run(tmp_path, deterministic):
    """1 epoch, then ``train(cfg(epochs=2), resume=...)``: same as 2 epochs straight.

    The LR schedule must not depend on ``epochs`` for this to hold: multistep with an
    absolute milestone (step 4 of 6) and AdamW (whose moments must be restored). No pruning:
    a 1-epoch run of a window that ends at epoch 2 is refused by the config.
    """
    sched = dict(optim__name="adamw", optim__lr=1e-2, optim__schedule="multistep",
                 optim__milestones="[4]")
    recipe = {**_RESUME, "prune__target": 0}
    straight = train(_cfg(tmp_path, "straight", **recipe, **sched), log=lambda msg: None)
    first = train(_cfg(tmp_path, "ext", **{**recipe, "epochs": 1}, **sched),
                  log=lambda msg: None)
    resumed = train(_cfg(tmp_path, "ext", **recipe, **sched), resume=first,
                    log=lambda msg: None)
    assert resumed == first
    _assert_same_weights(straight, resumed)
    assert read_metadata(resumed / "last.safetensors")["epoch"] == 2
    assert [float(r["lr"]) for r in _rows(resumed)] == [1e-2, pytest.approx(1e-3)]
    assert load_config(resumed / "config.yaml").epochs == 2


def test_cli_resume_continues_a_run(tmp_path, tiny_run, capsys):
    run_dir = _copy_run(tiny_run, tmp_path)
    assert main(["train", "--resume", str(run_dir), "--set", "epochs=2"]) == 0
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]
    assert read_metadata(run_dir / "last.safetensors")["epoch"] == 2
    assert f"resumed {run_dir} at epoch 2" in capsys.readouterr().out


def test_resume_after_failed_checkpoint_write_keeps_one_row_per_epoch(tmp_path, monkeypatch):
    """metrics.csv gets epoch 2's row before last.safetensors is written; if that write fails
    (disk full), resuming re-runs epoch 2 and must not leave two rows for it."""
    original = records_mod.save_checkpoint

    def fails_at_epoch_2(path, *args, **kwargs):
        if Path(path).name == "last.safetensors" and kwargs["extra"]["epoch"] == 2:
            raise CheckpointError(f"cannot save checkpoint {path}: No space left on device")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(records_mod, "save_checkpoint", fails_at_epoch_2)
    cfg = _cfg(tmp_path, "crash", epochs=2)
    with pytest.raises(CheckpointError, match="No space left"):
        train(cfg, log=lambda msg: None)
    monkeypatch.setattr(records_mod, "save_checkpoint", original)
    run_dir = train(cfg, resume=tmp_path / "crash", log=lambda msg: None)
    assert read_metadata(run_dir / "last.safetensors")["epoch"] == 2
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]


# --------------------------------------------------------------------------- DDP


def test_ddp_two_gloo_processes(tmp_path):
    out = tmp_path / "runs"
    sets = _overrides(out, "ddp", epochs=2, data__test_subset=101, data__val_size=63)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sstorch", "train", "--set", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SSTORCH_DEBUG", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert [p.name for p in out.iterdir()] == ["ddp"]
    run_dir = out / "ddp"
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2"]  # rank 0 writes each row once
    s = _summary(run_dir)
    assert s["test_n"] == 101  # summed over both ranks' disjoint shards (51 + 50), no padding
    assert 0 <= s["test_pgd2_acc"] <= s["test_clean_acc"] <= 1
    assert read_metadata(run_dir / "last.safetensors")["epoch"] == 2
    assert (run_dir / "best.safetensors").is_file()
    weights = load_weights(run_dir / "last.safetensors")
    assert not any(k.startswith("module.") for k in weights)
    assert sum("x2" in line and line.startswith("model ") for line in
               proc.stdout.splitlines()) == 1  # ran distributed, logged by rank 0 only
    assert sum(line.startswith("test:") for line in proc.stdout.splitlines()) == 1


# --------------------------------------------------------------------------- divergence


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path, nan_after):
    nan_after(2)  # 2 steps per epoch: epoch 2 diverges
    cfg = _cfg(tmp_path, "nan", epochs=3)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2") as info:
        train(cfg, log=lambda msg: None)
    run_dir = tmp_path / "nan"
    assert str(run_dir / "last.safetensors") in str(info.value)
    assert read_metadata(run_dir / "last.safetensors")["epoch"] == 1
    weights = load_weights(run_dir / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    model = _model()
    load_checkpoint(run_dir / "last.safetensors", model, restore_rng=False)
    assert [r["epoch"] for r in _rows(run_dir)] == ["1"]


def test_cli_nan_loss_exits_1_with_one_line_error(tmp_path, nan_after, capsys, monkeypatch):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    nan_after(2)
    assert main(["train", "--set", *_overrides(tmp_path, "nan", epochs=3)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("sstorch train: error: loss became nan at epoch 2")
    assert read_metadata(tmp_path / "nan" / "last.safetensors")["epoch"] == 1


def test_divergence_in_first_epoch_does_not_name_a_missing_checkpoint(tmp_path):
    """lr=1e30 diverges in epoch 1, before any checkpoint exists.

    The message must not send the user to a ``last.safetensors`` that is not there.
    """
    with pytest.raises(TrainingDiverged, match="epoch 1") as info:
        train(_cfg(tmp_path, "boom", optim__lr=1e30, epochs=2), log=lambda msg: None)
    last = tmp_path / "boom" / "last.safetensors"
    assert not last.exists()
    assert str(last) not in str(info.value), (
        f"the message points to a checkpoint that does not exist: {info.value}")
    assert "optim.grad_clip=1.0" in str(info.value)  # no clipping yet: suggest it
    with pytest.raises(TrainingDiverged, match="epoch 1") as info:
        train(_cfg(tmp_path, "boom2", optim__lr=1e30, optim__grad_clip=1.0, epochs=2),
              log=lambda msg: None)
    assert "grad_clip" not in str(info.value)  # clipping already on: not suggested again


# --------------------------------------------------------------------------- CLI errors


def _cli_error(capsys, argv: list[str], code: int = 1) -> str:
    """Run the CLI, expect ``code``, return its single-line stderr message."""
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sstorch train: error: ")
    return err


@pytest.mark.parametrize(("override", "expected"), [
    ("data.name=imagenett", ["unknown dataset 'imagenett'", "digits", "cifar10", "mnist"]),
    ("model.name=resnet", ["model.name='resnet' is not one of", "mlp", "vgg16", "vit"]),
    ("attack.name=cw", ["attack.name='cw'", "pgd", "trades", "fgsm", "none"]),
    ("optim.lrr=0.1", ["'optim.lrr'", "did you mean 'optim.lr'"]),
    ("attack.eps=-1", ["attack.eps", "-1"]),
    ("attack.eps=2", ["eps", "[0, 1]"]),
    ("attack.steps=0", ["attack.steps", "≥ 1"]),
    ("data.batch_size=0", ["data.batch_size", "≥ 1"]),
    ("epochs=0", ["epochs", "≥ 1"]),
])
def test_cli_bad_config(tmp_path, capsys, monkeypatch, override, expected):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    err = _cli_error(capsys, ["train", "--set", *_overrides(tmp_path), override])
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"


def test_cli_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "3"])
    assert info.value.code == 2
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err


def test_cli_unknown_command(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


def test_cli_resume_truncated_checkpoint(tmp_path, tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    run_dir = _copy_run(tiny_run, tmp_path)
    last = run_dir / "last.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    err = _cli_error(capsys, ["train", "--resume", str(run_dir), "--set", "epochs=2"])
    assert str(last) in err
    assert "truncated or corrupted" in err


def test_resume_truncated_checkpoint_raises_checkpoint_error(tmp_path, tiny_run):
    run_dir = _copy_run(tiny_run, tmp_path)
    last = run_dir / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train(load_config(run_dir / "config.yaml", ["epochs=2"]), resume=run_dir,
              log=lambda msg: None)


def test_cli_resume_dir_without_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _cli_error(capsys, ["train", "--resume", str(empty)])
    assert str(empty / "config.yaml") in err and "cannot resume" in err


def test_cli_resume_dir_without_checkpoint(tmp_path, tiny_run, capsys, monkeypatch):
    monkeypatch.delenv("SSTORCH_DEBUG", raising=False)
    run_dir = _copy_run(tiny_run, tmp_path)
    (run_dir / "last.safetensors").unlink()
    err = _cli_error(capsys, ["train", "--resume", str(run_dir)])
    assert str(run_dir / "last.safetensors") in err and "cannot resume" in err


# --------------------------------------------------------------------------- attacks


def test_training_adversaries_stay_in_the_eps_box():
    x, y = _digits_batch()
    assert x.min() == 0 and x.max() == 1  # both clamp boundaries are exercised
    model = _model().eval()
    eps = 0.1
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y).item()
    adversaries = {
        "pgd": PGD(eps, step_size=0.5, steps=3),
        "pgd-no-start": PGD(eps, step_size=0.5, steps=3, random_start=False),
        "pgd-restarts": PGD(eps, step_size=0.03, steps=2, restarts=2),
        "fgsm": FGSM(eps, step_size=1.25 * eps, random_start=True),
        "fgsm-plain": FGSM(eps),
        "trades": lambda m, xs, ys: trades_adversary(m, xs, eps, 0.5, 3),
    }
    for name, attack in adversaries.items():
        x_adv = attack(model, x, y)
        _assert_in_box(x, x_adv, eps)
        assert (x_adv - x).abs().max().item() > eps / 2, name  # it did move
        assert all(p.grad is None for p in model.parameters()), name  # no leak into params
        if name.startswith(("pgd", "fgsm")):
            with torch.no_grad():
                assert F.cross_entropy(model(x_adv), y).item() > clean_loss, name


# --------------------------------------------------------------------------- evaluate


def _test_loader(n: int = 360, batch_size: int = 128) -> DataLoader:
    ds = get_dataset("digits", train=False)
    return DataLoader(Subset(ds, list(range(n))), batch_size)


def test_evaluate_robust_below_clean_and_deterministic(clean_run):
    model = _model()
    load_checkpoint(clean_run / "best.safetensors", model, restore_rng=False)
    loader = _test_loader()
    device = torch.device("cpu")

    clean = evaluate(model, loader, device)
    assert set(clean) == {"clean_acc", "n"} and clean["n"] == 360
    with torch.no_grad():
        direct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    assert clean["clean_acc"] == pytest.approx(direct / 360)
    assert clean["clean_acc"] == pytest.approx(_summary(clean_run)["test_clean_acc"])

    attack = PGD(0.3, 0.1, steps=2)
    torch.manual_seed(123)
    first = evaluate(model, loader, device, attack)
    torch.manual_seed(123)
    second = evaluate(model, loader, device, attack)
    assert first == second
    assert first["clean_acc"] == clean["clean_acc"]
    assert 0 <= first["robust_acc"] < first["clean_acc"]  # ε = 0.3 hurts a clean model

    weak = evaluate(model, loader, device, PGD(0.0, 0.1, steps=2))
    assert weak["robust_acc"] == weak["clean_acc"]  # ε = 0 leaves every image unchanged


def test_evaluate_untrained_model_attacks_only_correct_examples():
    model = _model(seed=1)
    result = evaluate(model, _test_loader(64, 16), torch.device("cpu"), PGD(0.1, 0.05, 2))
    assert result["n"] == 64
    assert 0 <= result["robust_acc"] <= result["clean_acc"] <= 1


# --------------------------------------------------------------------------- pruning + best


def test_reported_model_meets_the_pruning_target(tmp_path, monkeypatch):
    """The best checkpoint (evaluated in summary.json) must be pruned to ``prune.target``.

    Here the validation score falls every epoch, so the best epoch is epoch 1, when the ramp
    has pruned only half of the target (25 %). summary.json then reports an under-pruned
    model as the result of a run configured for 50 % sparsity.
    """
    original = train_mod.evaluate
    calls = [0]

    def falling(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if "robust_acc" in out:
            out["robust_acc"] = 1.0 / calls[0]
        return out

    monkeypatch.setattr(train_mod, "evaluate", falling)
    run_dir = train(_cfg(tmp_path, "prune", epochs=3, prune__target=0.5, prune__start_epoch=1,
                         prune__end_epoch=2), log=lambda msg: None)
    assert [int(r[f"nnz/{LAYER}"]) for r in _rows(run_dir)][-1] == N_FACTOR_ENTRIES // 2
    layer = next(st for st in _summary(run_dir)["layers"] if st["name"] == LAYER)
    assert layer["sparsity"] >= 0.5, (
        f"summary.json reports a model with sparsity {layer['sparsity']} although "
        "prune.target=0.5 (best checkpoint chosen before the pruning ramp ended)")


def test_on_epoch_sees_each_row_and_can_stop_the_run(tmp_path: Path) -> None:
    """The hook gets every epoch's metrics row after its checkpoint; raising stops training
    there, and ``--resume`` continues from that epoch (how a search prunes a trial)."""
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def hook(epoch: int, row: dict) -> None:
        seen.append((epoch, row["val_robust_acc"]))
        if epoch == 2:
            raise Stop

    cfg = _cfg(tmp_path, epochs=4)
    with pytest.raises(Stop):
        train_mod.train(cfg, log=lambda *a: None, on_epoch=hook)
    run_dir = tmp_path / "run"
    assert [e for e, _ in seen] == [1, 2]
    assert [int(r["epoch"]) for r in _rows(run_dir)] == [1, 2]
    assert seen[1][1] == pytest.approx(float(_rows(run_dir)[1]["val_robust_acc"]))
    assert not (run_dir / "summary.json").exists()
    train_mod.train(cfg, resume=run_dir, log=lambda *a: None, on_epoch=hook)
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert (run_dir / "summary.json").is_file()
