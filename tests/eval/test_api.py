"""``sstorch.evaluate`` on models sstorch did not build (the public Python API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sstorch

ROOT = Path(__file__).resolve().parents[2]


def _resnet_and_own_labels(n: int = 8) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An untrained torchvision ResNet-18 and images it classifies correctly by construction."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.rand(n, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    model.train()
    return model, x, y


def test_evaluate_a_plain_torchvision_model_end_to_end():
    model, x, y = _resnet_and_own_labels()
    grads = [p.requires_grad for p in model.parameters()]
    report = sstorch.evaluate(model, (x, y), eps=8 / 255, square_queries=300)
    assert report.n == 8 and report.clean_acc == 1.0
    assert list(report.attacks) == ["pgd", "autoattack"]
    # a network trained on nothing has no robustness: the attacks break every image
    assert report.robust_acc == 0.0
    assert report.attacks["autoattack"]["acc"] <= report.attacks["pgd"]["acc"]
    assert [c.name for c in report.sanity] == [
        "monotone_eps", "large_eps", "iterative_vs_fgsm", "more_steps", "blackbox_vs_whitebox",
        "deterministic_forward"]
    assert report.sanity_passed is True
    lo, hi = report.interval()
    assert lo == 0.0 and 0.2 < hi < 0.4  # Wilson 95 % upper bound for 0 of 8 is 0.324
    # the model is handed back as it came: training mode and parameter gradients
    assert model.training and [p.requires_grad for p in model.parameters()] == grads
    text = str(report)
    assert "robust (worst case)" in text and "deterministic_forward: pass" in text
    assert report.to_dict()["sanity"][0]["name"] == "monotone_eps"


class _Constant(nn.Module):
    """Logits that ignore the input: no attack can change its answer, and no gradient flows."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(2.0, -1.0, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_an_unbreakable_model_is_flagged_by_the_sanity_checks():
    x = torch.rand(20, 1, 4, 4)
    y = torch.tensor([0] * 12 + [1] * 8)
    report = sstorch.evaluate(_Constant(), TensorDataset(x, y), eps=0.1, attacks=["pgd"],
                              square_queries=50)
    assert report.clean_acc == pytest.approx(0.6) and report.robust_acc == pytest.approx(0.6)
    failed = {c.name for c in report.sanity if not c.passed}
    assert "large_eps" in failed and report.sanity_passed is False


def test_dataset_loader_and_tensor_pair_give_the_same_numbers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.rand(24, 1, 4, 4), torch.randint(0, 3, (24,))
    kw = {"eps": 0.05, "attacks": ["fgsm", "pgd"], "sanity": False, "batch_size": 10}
    a = sstorch.evaluate(model, (x, y), **kw)
    b = sstorch.evaluate(model, DataLoader(TensorDataset(x, y), batch_size=5), **kw)
    c = sstorch.evaluate(model, TensorDataset(x, y), **kw)
    assert (a.clean_acc, a.robust_acc) == (b.clean_acc, b.robust_acc) == (c.clean_acc,
                                                                          c.robust_acc)
    assert a.robust_acc <= a.attacks["fgsm"]["acc"] <= a.clean_acc
    first = sstorch.evaluate(model, (x, y), n=10, **kw)
    assert first.n == 10


@pytest.mark.parametrize("bad, match", [
    ({"data": (torch.rand(4, 1, 4, 4) * 2 - 1, torch.zeros(4, dtype=torch.long))}, r"\[0, 1\]"),
    ({"data": (torch.rand(4, 1, 4, 4), torch.zeros(4))}, "integer tensor"),
    ({"data": (torch.rand(4, 1, 4, 4), torch.full((4,), 7))}, "3 outputs"),
    ({"data": (torch.rand(4, 1, 4, 4), torch.zeros(3, dtype=torch.long))}, "as many labels"),
    ({"eps": 8}, "eps must be in"),
    ({"n": 0}, "n must be an integer"),
    ({"attacks": ["pgd", "nope"]}, "unknown attack"),
    ({"attack_kwargs": {"fgsm": {}}}, "attack_kwargs"),
])
def test_bad_input_gets_a_clear_error(bad, match):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    args = {"data": (torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)), "eps": 0.1,
            "attacks": ["pgd"], "sanity": False, **bad}
    with pytest.raises(ValueError, match=match):
        sstorch.evaluate(model, args.pop("data"), **args)


def test_not_a_model_or_not_data():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        sstorch.evaluate(lambda x: x, (torch.rand(2, 1, 2, 2), torch.zeros(2).long()))
    with pytest.raises(TypeError, match="Dataset"):
        sstorch.evaluate(nn.Linear(2, 2), 42)


def test_readme_python_api_example_runs():
    """The README's "Python API" snippet, run as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "README's Python API section has no python block"
    scope: dict = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)
    assert isinstance(scope["report"], sstorch.RobustnessReport)
