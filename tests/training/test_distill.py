"""Robust distillation (``distill.*``): the RSLAD and ARD objectives, the KL adversary, and a
student that learns its teacher's function end to end (tiny digits runs)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sstorch.attacks import kl_adversary
from sstorch.config import ConfigError, DistillConfig, MLPConfig, load_config
from sstorch.data import DATASET_INFO, get_dataset
from sstorch.eval.run import load_run
from sstorch.io.checkpoint import save_checkpoint
from sstorch.models import build_model
from sstorch.training.distill import distill_loss
from sstorch.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    ds = get_dataset("digits", train=False)
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.tensor(ys)


def _model(seed: int, separable: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    info = DATASET_INFO["digits"]
    cfg = MLPConfig(hidden=[[4, 4]], structure="separable" if separable else "dense")
    return build_model(cfg, info.num_classes, info.image_shape, info.mean, info.std)


def _kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0):
    p = F.softmax(teacher_logits / tau, 1)
    return (p * (p.log() - F.log_softmax(student_logits / tau, 1))).sum(1).mean()


def test_rslad_is_zero_for_a_student_equal_to_its_teacher_at_eps_0() -> None:
    x, y = _batch()
    teacher = _model(0).eval()
    student = copy.deepcopy(teacher)
    loss, _ = distill_loss(student, teacher, x, y, DistillConfig(teacher="t"), 0.0, 0.1, 3)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    other = _model(1)
    loss, _ = distill_loss(other, teacher, x, y, DistillConfig(teacher="t"), 0.0, 0.1, 3)
    assert loss.item() > 1e-4


@pytest.mark.parametrize("method", ["rslad", "ard"])
def test_objectives_match_their_formulas_at_eps_0(method: str) -> None:
    """At ε = 0, x' = x, so both terms are computable by hand (α = 0.6, τ = 2)."""
    x, y = _batch()
    teacher, student = _model(0).eval(), _model(1)
    cfg = DistillConfig(teacher="t", method=method, alpha=0.6, temperature=2.0)
    loss, logits = distill_loss(student, teacher, x, y, cfg, 0.0, 0.1, 3)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    assert torch.allclose(logits, s, atol=1e-6)
    if method == "rslad":  # the temperature plays no part in RSLAD
        expected = 0.6 * _kl(s, t) + 0.4 * _kl(s, t)
    else:
        expected = 0.6 * 4 * _kl(s, t, 2.0) + 0.4 * F.cross_entropy(s, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_adversary_stays_in_the_box_and_raises_the_divergence() -> None:
    x, _ = _batch()
    teacher, student = _model(0).eval(), _model(1).eval()
    with torch.no_grad():
        p = F.softmax(teacher(x), 1)
    eps = 0.1
    torch.manual_seed(0)
    xa = kl_adversary(student, x, p, eps, eps / 4, 10)
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        before, after = _kl(student(x), teacher(x)), _kl(student(xa), teacher(x))
    assert after > before * 1.05


def _overrides(out: Path, name: str, **kw: object) -> list[str]:
    base = {
        "data.name": "digits", "model.hidden": "[[4,4]]", "device": "cpu", "out_dir": str(out),
        "name": name, "epochs": 3, "data.train_subset": 512, "data.val_size": 64,
        "data.test_subset": 200, "data.batch_size": 64, "attack.eps": 0.05,
        "attack.step_size": 0.02, "attack.steps": 2, "eval.pgd_steps": 2,
        "eval.val_pgd_steps": 2, "optim.name": "adamw", "optim.lr": 0.05,
        "optim.schedule": "none", "attack.eps_warmup_epochs": 0,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _predictions(run_dir: Path) -> torch.Tensor:
    _, model, _, _ = load_run(run_dir)
    x, _ = _batch(200)
    with torch.no_grad():
        return model(x).argmax(1)


def test_a_distilled_student_learns_its_teachers_function(tmp_path: Path) -> None:
    """A teacher that answers 3 to everything: the distilled student answers 3 (it never sees
    a label with α = 1), the same student trained on labels does not."""
    teacher_dir = train(load_config(None, _overrides(
        tmp_path, "teacher", model__structure="dense", epochs=1,
        constraints__lambda_sparsity=0, constraints__lambda_cond=0)), log=lambda *a: None)
    _, teacher, _, _ = load_run(teacher_dir)
    head = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[3] = 5.0
    save_checkpoint(teacher_dir / "best.safetensors", teacher, extra={"epoch": 1}, rng=False)
    assert (_predictions(teacher_dir) == 3).all()

    student = train(load_config(None, _overrides(
        tmp_path, "student", distill__teacher=teacher_dir, distill__alpha=1.0)),
        log=lambda *a: None)
    plain = train(load_config(None, _overrides(tmp_path, "plain")), log=lambda *a: None)
    assert (_predictions(student) == 3).float().mean() >= 0.95
    assert (_predictions(plain) == 3).float().mean() <= 0.5
    saved = json.loads((student / "summary.json").read_text())
    assert saved["test_clean_acc"] < 0.3  # it learned the teacher, not the labels


@pytest.mark.parametrize(("item", "match"), [
    ("distill.method=kd", "distill.method"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("distill.temperature=0", "distill.temperature"),
])
def test_bad_distill_settings_name_the_key(item: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [item])


def test_distillation_needs_the_pgd_adversary_and_a_real_teacher(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"attack\.name=pgd"):
        load_config(None, ["distill.teacher=runs/x", "attack.name=trades"])
    cfg = load_config(None, _overrides(tmp_path, "s", distill__teacher=tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"distill\.teacher=.*nope.*does not exist"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "s").exists()  # nothing written before the teacher is checked
