"""AutoAttack: worst case over its attacks, bookkeeping, skipped components, mode, checks."""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
import warnings

import pytest
import torch
from torch import Tensor, nn

from digits_models import fgsm_trained, held_out, undefended
from sstorch.attacks import autoattack
from sstorch.attacks.apgd import APGD
from sstorch.attacks.autoattack import STANDARD, AutoAttack, AutoAttackResult
from sstorch.attacks.registry import make_attack

EPS = 0.15
HAVE = {name: importlib.util.find_spec(f"sstorch.attacks.{name}") is not None
        for name in ("fab", "square")}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def standard() -> tuple[AutoAttackResult, Tensor, Tensor]:
    """The standard version on 200 held-out digits, FGSM-trained model (≈ 41 % robust)."""
    x, y = held_out(200)
    with warnings.catch_warnings():  # a component not written yet is skipped with a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        result = AutoAttack(EPS).run(fgsm_trained(), x, y, batch_size=500)
    return result, x, y


def predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def test_bookkeeping(standard) -> None:
    result, x, y = standard
    model = fgsm_trained()
    assert result.attacks == [a for a in STANDARD if a not in result.skipped]
    assert result.complete == all(HAVE.values())
    assert result.robust.dtype == result.clean_correct.dtype == torch.bool
    assert torch.equal(result.clean_correct, predict(model, x) == y)
    assert not (result.robust & ~result.clean_correct).any()  # robust ⇒ clean-correct
    # per-attack accuracies are cumulative: non-increasing, ending at the robust accuracy
    accs = [result.accuracy["clean"]] + [result.accuracy[a] for a in result.attacks]
    assert all(b <= a for a, b in itertools.pairwise(accs))
    assert accs[0] == pytest.approx(result.clean_accuracy)
    assert accs[-1] == pytest.approx(result.robust_accuracy)
    assert set(result.seconds) == {"clean", *result.attacks}
    # fooled_by: which attack broke each clean-correct, non-robust example
    broken = result.clean_correct & ~result.robust
    assert torch.equal(result.fooled_by >= 0, broken)
    for i in range(len(result.attacks)):
        drop = accs[i] - accs[i + 1]
        # accuracies are float32 means: compare at a tolerance far below one example (1/n)
        n = len(result.fooled_by)
        assert (result.fooled_by == i).float().mean().item() == pytest.approx(drop, abs=0.1 / n)
    # x_adv: valid, fools the model exactly where not robust, the input elsewhere
    assert (result.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(predict(model, result.x_adv) == y, result.robust)
    keep = result.robust | ~result.clean_correct
    assert torch.equal(result.x_adv[keep], x[keep])
    assert "robust accuracy" in str(result)


def test_worst_case_is_at_most_each_component(standard) -> None:
    """Each attack alone on the same inputs; AutoAttack's robust accuracy is ≤ every one of them.

    Slack of one example: a component's random draws depend on which examples share its batch,
    and inside AutoAttack it sees only the survivors. The first attack sees the same batch
    alone and inside AutoAttack, so its accuracy must match exactly."""
    result, x, y = standard
    model = fgsm_trained()
    for i, name in enumerate(result.attacks):
        alone = (predict(model, make_attack(name, EPS)(model, x, y)) == y).float().mean().item()
        assert result.robust_accuracy <= alone + 1 / len(y), (name, alone)
        if i == 0:
            assert result.accuracy[name] == pytest.approx(alone)
    assert result.robust_accuracy < result.clean_accuracy - 0.3


def test_call_returns_the_worst_case_and_is_deterministic() -> None:
    model = fgsm_trained()
    x, y = held_out(100)
    aa = AutoAttack(EPS, attacks=["apgd-ce", "apgd-t"])
    r1 = aa.run(model, x, y, batch_size=64)
    assert torch.equal(aa(model, x, y), aa.run(model, x, y, batch_size=500).x_adv)
    assert torch.equal(r1.x_adv, aa.run(model, x, y, batch_size=64).x_adv)
    assert aa.version == "custom" and r1.complete and r1.attacks == ["apgd-ce", "apgd-t"]


def test_undefended_model_has_no_robustness() -> None:
    x, y = held_out(200)
    result = AutoAttack(0.2, attacks=["apgd-ce", "apgd-t"]).run(undefended(), x, y)
    assert result.clean_accuracy > 0.85 and result.robust_accuracy < 0.03


def test_missing_component_is_skipped_with_a_warning(monkeypatch) -> None:
    components = dict(autoattack.COMPONENTS)
    components["fab-t"] = ("sstorch._not_written_yet", "FABTargeted", {})
    monkeypatch.setattr(autoattack, "COMPONENTS", components)
    x, y = held_out(64)
    with pytest.warns(RuntimeWarning, match="skips fab-t"):
        result = AutoAttack(EPS, attacks=["apgd-ce", "fab-t"]).run(fgsm_trained(), x, y)
    assert result.attacks == ["apgd-ce"] and "fab-t" in result.skipped
    assert not result.complete and any("fab-t" in w for w in result.warnings)
    assert "upper bound" in str(result)


def test_broken_import_inside_a_component_is_not_hidden(monkeypatch, tmp_path) -> None:
    (tmp_path / "fake_fab.py").write_text("import a_package_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    components = dict(autoattack.COMPONENTS)
    components["fab-t"] = ("fake_fab", "FABTargeted", {})
    monkeypatch.setattr(autoattack, "COMPONENTS", components)
    x, y = held_out(8)
    with pytest.raises(ModuleNotFoundError, match="a_package_that_does_not_exist"):
        AutoAttack(EPS, attacks=["fab-t"]).run(fgsm_trained(), x, y)


def test_component_outside_the_ball_is_projected_and_recorded(monkeypatch) -> None:
    class Sloppy:
        """Steps 3ε along APGD's direction: outside the ball unless projected."""

        def __init__(self, eps: float, norm: str, seed: int) -> None:
            self.apgd = APGD(eps, norm, n_iter=10, seed=seed)

        def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return (x + 3 * (self.apgd(model, x, y) - x)).clamp(0, 1)

    module = types.ModuleType("sloppy_attack")
    module.Sloppy = Sloppy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sloppy_attack", module)
    components = dict(autoattack.COMPONENTS)
    components["square"] = ("sloppy_attack", "Sloppy", {})
    monkeypatch.setattr(autoattack, "COMPONENTS", components)
    x, y = held_out(64)
    with pytest.warns(RuntimeWarning, match="outside the threat model"):
        result = AutoAttack(EPS, attacks=["square"]).run(fgsm_trained(), x, y)
    assert result.warnings and (result.x_adv - x).abs().max().item() <= EPS + 1e-6
    assert torch.equal(predict(fgsm_trained(), result.x_adv) == y, result.robust)


def test_model_modes_are_restored() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Dropout(0.5), nn.Linear(16, 10))
    net.train()
    net[4].eval()  # a submodule with its own mode
    bn_mean = net[2].running_mean.clone()
    x, y = held_out(32)
    AutoAttack(0.1, attacks=["apgd-ce"]).run(net, x, y)
    assert net.training and net[2].training and not net[4].training
    assert torch.equal(net[2].running_mean, bn_mean)  # evaluated in eval mode


def test_input_checks() -> None:
    for bad in (dict(eps=1.5), dict(eps=-0.1), dict(eps=float("nan")), dict(eps=0.1, norm="L1"),
                dict(eps=0.1, version="plus"), dict(eps=0.1, version="custom"),
                dict(eps=0.1, attacks=["apgd-ce", "pgd"]), dict(eps=0.1, attacks=[])):
        with pytest.raises(ValueError):
            AutoAttack(**bad)
    aa, model = AutoAttack(0.1, attacks=["apgd-ce"]), undefended()
    x, y = held_out(8)
    with pytest.raises(ValueError, match="labels"):
        aa.run(model, x, y[:4])
    with pytest.raises(ValueError, match="labels"):
        aa.run(model, x, y[:, None])
    with pytest.raises(ValueError, match="int64"):
        aa.run(model, x, y.float())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aa.run(model, x * 2 - 0.5, y)
    with pytest.raises(ValueError, match="batch_size"):
        aa.run(model, x, y, batch_size=0)


def test_l2_runs_apgd_and_skips_linf_only_components() -> None:
    x, y = held_out(64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = AutoAttack(1.0, norm="L2").run(fgsm_trained(), x, y)
    assert result.attacks[:2] == ["apgd-ce", "apgd-t"]
    assert set(result.attacks) | set(result.skipped) == set(STANDARD)
    assert all("norm" in why or "not installed" in why for why in result.skipped.values())
    delta = (result.x_adv - x).flatten(1).norm(dim=1)
    assert (delta <= 1.0 + 1e-5).all()
    assert torch.equal(predict(fgsm_trained(), result.x_adv) == y, result.robust)


def test_nothing_left_to_attack_skips_the_remaining_components() -> None:
    """A model wrong on every input leaves no survivors: each attack is a no-op, not a crash."""

    class AlwaysOne(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.nn.functional.one_hot(torch.ones(len(x), dtype=torch.long), 10).float()

    x, _ = held_out(20)
    y = torch.zeros(20, dtype=torch.long)
    result = AutoAttack(EPS, attacks=["apgd-ce", "apgd-t"]).run(AlwaysOne(), x, y)
    assert result.attacks == ["apgd-ce", "apgd-t"]
    assert result.robust_accuracy == 0.0 and torch.equal(result.x_adv, x)
    assert (result.fooled_by == -1).all()  # already wrong before any attack
