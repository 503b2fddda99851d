"""The training objectives registry (:mod:`sstorch.training.objectives`)."""

import sstorch.config.sections as config_mod
from sstorch.config import AttackConfig, DistillConfig
from sstorch.training.objectives import OBJECTIVES


def _choices(section, monkeypatch) -> set[str]:
    """The names ``section.validate()`` accepts (the choices it passes to ``_choice``)."""
    seen: dict[str, tuple[str, ...]] = {}
    monkeypatch.setattr(config_mod, "_choice",
                        lambda value, choices, key: seen.setdefault(key, choices))
    section.validate()
    return set(next(v for k, v in seen.items() if k.endswith(".name") or k.endswith(".method")))


def test_every_training_attack_has_an_objective(monkeypatch):
    names = _choices(AttackConfig(), monkeypatch)
    assert names == {"pgd", "trades", "fgsm", "none"}
    assert names <= set(OBJECTIVES)


def test_every_distill_method_has_an_objective(monkeypatch):
    names = _choices(DistillConfig(), monkeypatch)
    assert names == {"rslad", "ard"}
    assert names <= set(OBJECTIVES)
