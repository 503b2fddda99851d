"""AutoAttack: the field's standard robustness evaluation, a worst case over four attacks.

Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*, ICML 2020 (arXiv 2003.01690). The standard version runs, each attack
only on the examples that every earlier one left classified correctly:

1. APGD-CE — :class:`sstorch.attacks.apgd.APGD`, cross-entropy, 100 iterations, 1 restart;
2. APGD-T — :class:`sstorch.attacks.apgd.APGDTargeted`, targeted DLR, 9 target classes, 100
iterations;
3. FAB-T — ``sstorch.attacks.fab.FABTargeted``, 9 target classes, 100 iterations;
4. Square — ``sstorch.attacks.square.Square``, 5000 queries, ``p_init = 0.8`` (gradient-free).

An example is *robust* iff it is classified correctly and survives all four: the robust accuracy
is the fraction of such examples. FAB-T and Square are imported when the evaluation runs; one
that is not installed is skipped with a warning, recorded in the result, whose robust accuracy
is then only an upper bound (``result.complete`` is False).
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sstorch.attacks.apgd import APGD, APGDTargeted
from sstorch.attacks.base import Attack, check_labels, per_example
from sstorch.attacks.registry import register_attack

__all__ = ["COMPONENTS", "STANDARD", "AutoAttack", "AutoAttackResult"]

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")

#: name → (module, class, keyword arguments of the standard version)
COMPONENTS: dict[str, tuple[str, str, dict[str, int | float | str]]] = {
    "apgd-ce": ("sstorch.attacks.apgd", "APGD", {"n_iter": 100, "n_restarts": 1, "loss": "ce"}),
    "apgd-dlr": ("sstorch.attacks.apgd", "APGD", {"n_iter": 100, "n_restarts": 1, "loss": "dlr"}),
    "apgd-t": ("sstorch.attacks.apgd", "APGDTargeted",
               {"n_iter": 100, "n_restarts": 1, "n_target_classes": 9}),
    "fab-t": ("sstorch.attacks.fab", "FABTargeted", {"n_iter": 100, "n_target_classes": 9}),
    "square": ("sstorch.attacks.square", "Square", {"n_queries": 5000, "p_init": 0.8}),
}

# Slack for floating-point round-off in a component's ε-ball (x + ε − x ≠ ε in float32).
_BALL_TOL = 1e-5


@dataclass
class AutoAttackResult:
    """What :meth:`AutoAttack.run` measured, per example and per attack.

    Attributes
    ----------
    x_adv : Tensor
        The worst case per example: the first point that fooled the model, else the clean input
        (so ``model(x_adv).argmax(1) == y`` exactly where ``robust``).
    clean_correct, robust : Tensor
        Boolean ``(N,)``: classified correctly on the clean input / on every attack's output.
    fooled_by : Tensor
        ``(N,)`` int64: index into ``attacks`` of the attack that broke the example, −1 if it was
        robust or already misclassified.
    attacks : list of str
        The attacks that ran, in order.
    accuracy : dict
        ``"clean"`` and, per attack, the robust accuracy after it (cumulative, non-increasing).
    seconds : dict
        Wall-clock seconds per attack (and ``"clean"``).
    skipped : dict
        Attack → why it did not run (e.g. its module is not installed).
    warnings : list of str
        Everything the run warned about (skipped attacks, outputs outside the threat model).
    """

    x_adv: Tensor
    clean_correct: Tensor
    robust: Tensor
    fooled_by: Tensor
    attacks: list[str] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def clean_accuracy(self) -> float:
        return self.clean_correct.float().mean().item()

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()

    @property
    def complete(self) -> bool:
        """Every requested attack ran: the robust accuracy is the full worst case."""
        return not self.skipped

    def __str__(self) -> str:
        lines = [f"clean accuracy: {100 * self.clean_accuracy:.2f}%"]
        lines += [f"after {name}: {100 * self.accuracy[name]:.2f}% ({self.seconds[name]:.1f} s)"
                  for name in self.attacks]
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        lines.append(f"robust accuracy: {100 * self.robust_accuracy:.2f}%"
                     + ("" if self.complete else " (upper bound: attacks were skipped)"))
        return "\n".join(lines)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode, restoring each one's own mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


@register_attack("autoattack")
class AutoAttack(Attack):
    r"""AutoAttack (Croce & Hein 2020): APGD-CE → APGD-T → FAB-T → Square, worst case per example.

    Threat model: ``‖x_adv − x‖_p ≤ ε``, ``p ∈ {∞, 2}``, ``x_adv ∈ [0, 1]``; images in ``[0, 1]``
    with the normalization inside the model. Each attack runs only on the examples still
    classified correctly; its outputs are projected onto the threat model (absorbing round-off)
    and checked with the model, so a counted success is always a valid adversarial example.
    The model is evaluated in eval mode (each module's own mode is restored afterwards).
    As an :class:`~sstorch.attacks.base.Attack`, ``attack(model, images, labels)`` is
    ``run(...).x_adv`` (images returned unchanged for ``ε = 0`` or an empty batch).

    Parameters
    ----------
    eps : float
        Radius of the threat model in pixel units (``[0, 1]`` for L∞).
    norm : {"Linf", "L2"}
        Default ``"Linf"``.
    version : {"standard", "custom"}
        ``"standard"``: the four attacks above with the paper's settings. ``"custom"``: the
        attacks named in ``attacks`` (passing ``attacks`` implies ``"custom"``).
    seed : int or None
        Seed passed to every attack (each draws from its own generator, see :meth:`generator`):
        runs are reproducible.
    attacks : sequence of str, optional
        Names from :data:`COMPONENTS` (``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ``"fab-t"``,
        ``"square"``), run in the given order.

    Examples
    --------
    >>> result = AutoAttack(eps=8 / 255).run(model, images, labels, batch_size=500)
    >>> print(result.robust_accuracy, result.accuracy)
    """

    def __init__(self, eps: float, norm: str = "Linf", version: str = "standard",
                 seed: int | None = 0,
                 attacks: list[str] | tuple[str, ...] | None = None) -> None:
        super().__init__(eps, norm=norm, seed=seed)
        if version not in ("standard", "custom"):
            raise ValueError(f"version must be 'standard' or 'custom', got {version!r}")
        if attacks is None:
            if version == "custom":
                raise ValueError("version='custom' needs attacks=[...]")
            attacks = STANDARD
        else:
            version = "custom"
            unknown = [a for a in attacks if a not in COMPONENTS]
            if unknown or not attacks:
                raise ValueError(f"unknown attacks {unknown}; choose from {sorted(COMPONENTS)}")
        self.version, self.attacks = version, list(attacks)

    def __repr__(self) -> str:
        return (f"AutoAttack(eps={self.eps:g}, norm={self.norm!r}, version={self.version!r}, "
                f"attacks={self.attacks})")

    def component(self, name: str) -> Attack:
        """The attack ``name`` with this evaluation's settings (may raise ModuleNotFoundError)."""
        module, cls, kwargs = COMPONENTS[name]
        if module == "sstorch.attacks.apgd":
            attack_cls: type = APGD if cls == "APGD" else APGDTargeted
        else:
            attack_cls = getattr(importlib.import_module(module), cls)
        return attack_cls(self.eps, norm=self.norm, seed=self.seed, **kwargs)

    def generator(self, device: torch.device) -> None:
        """None: AutoAttack draws nothing itself; each component gets :attr:`seed` and draws
        from its own generator, so every component's draws are those it makes alone."""
        return None

    def check_inputs(self, images: Tensor, labels: Tensor) -> None:
        """Refuse labels that are not int64 ``(N,)`` and images outside ``[0, 1]``."""
        check_labels(images, labels)
        if labels.dtype != torch.long:
            raise ValueError(f"labels must be int64 class indices, got {labels.dtype}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("images must be in [0, 1] (normalization belongs inside the model)")

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        """The worst-case adversarial examples (``run(...).x_adv``, batches of 500)."""
        with eval_mode(model):
            return self._run(model, x, labels.detach(), 500).x_adv

    def run(self, model: nn.Module, images: Tensor, labels: Tensor,
            batch_size: int = 500) -> AutoAttackResult:
        """Evaluate ``model`` on ``(images, labels)``; see :class:`AutoAttackResult`."""
        self.check_inputs(images, labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one example")
        with eval_mode(model):
            return self._run(model, images.detach(), labels.detach(), batch_size)

    def _predict(self, model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
        with torch.no_grad():
            return torch.cat([model(b).argmax(1) for b in x.split(batch_size)])

    def _project_measured(self, x_adv: Tensor, x: Tensor) -> tuple[Tensor, float]:
        """``x_adv`` projected onto the threat model, and how far outside it was (L2: ``δ``
        scaled by ``min(1, ε / (‖δ‖₂ + 10⁻¹²))``, not the base's :meth:`project`)."""
        delta = x_adv - x
        if self.norm == "Linf":
            excess = delta.abs().amax() - self.eps
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1)
            excess = norms.amax() - self.eps
            scale = (self.eps / (norms + 1e-12)).clamp(max=1.0)
            delta = delta * per_example(scale, x)
        outside = torch.stack([excess, -x_adv.amin(), x_adv.amax() - 1]).amax().item()
        return (x + delta).clamp(0, 1), outside

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> AutoAttackResult:
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        start = time.perf_counter()
        clean_correct = self._predict(model, x, batch_size) == y
        sync()
        result = AutoAttackResult(
            x_adv=x.clone(), clean_correct=clean_correct, robust=clean_correct.clone(),
            fooled_by=torch.full_like(y, -1),
            accuracy={"clean": clean_correct.float().mean().item()},
            seconds={"clean": time.perf_counter() - start})
        for name in self.attacks:
            module, cls = COMPONENTS[name][:2]
            try:
                attack = self.component(name)
            except ModuleNotFoundError as err:
                if err.name != module:  # the module is there but one of its imports is not
                    raise
                why = f"{module} is not installed yet; robust accuracy is an upper bound"
            except ValueError as err:  # our arguments are valid: only the norm can be refused
                if self.norm == "Linf":
                    raise
                why = f"{cls} refuses norm={self.norm!r} ({err}); robust accuracy is an upper bound"
            else:
                why = ""
            if why:
                result.skipped[name] = why
                result.warnings.append(f"skipped {name}: {why}")
                warnings.warn(f"AutoAttack skips {name}: {why}", RuntimeWarning, stacklevel=3)
                continue
            start = time.perf_counter()
            todo = result.robust.nonzero().squeeze(1)
            for idx in todo.split(batch_size) if todo.numel() else ():  # none left: skip
                xb, yb = x[idx], y[idx]
                adv, outside = self._project_measured(attack(model, xb, yb).detach(), xb)
                if outside > _BALL_TOL:
                    msg = (f"{name} returned points {outside:.2e} outside the threat model; "
                           "they were projected back before checking")
                    result.warnings.append(msg)
                    warnings.warn(msg, RuntimeWarning, stacklevel=3)
                fooled = self._predict(model, adv, batch_size) != yb
                result.x_adv[idx[fooled]] = adv[fooled]
                result.robust[idx[fooled]] = False
                result.fooled_by[idx[fooled]] = len(result.attacks)
            sync()
            result.attacks.append(name)
            result.seconds[name] = time.perf_counter() - start
            result.accuracy[name] = result.robust.float().mean().item()
        return result
