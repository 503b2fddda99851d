"""``sstorch.evaluate``: the full robustness evaluation of *any* PyTorch classifier.

The model need not come from sstorch: anything that maps a batch of images in ``[0, 1]``
(``N × C × H × W``) to logits (``N × classes``) works; put input normalisation inside the model.
The evaluation is the one ``sstorch eval`` runs on a trained run (:mod:`sstorch.eval.run`):
clean accuracy, each attack's accuracy, the per-example worst case over the attacks, and the
sanity checks of Carlini et al. 2019 that catch gradient masking.

>>> report = sstorch.evaluate(model, test_set, eps=8 / 255, n=1000)  # doctest: +SKIP
>>> print(report)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from sstorch.eval.common import _check_eps, _device_of, _make_attack, frozen
from sstorch.eval.run import parse_attacks
from sstorch.eval.sanity import SanityCheck, sanity_checks
from sstorch.eval.worst_case import evaluate_attacks

__all__ = ["RobustnessReport", "evaluate"]

DEFAULT_API_ATTACKS = ("pgd", "autoattack")


@dataclass(frozen=True)
class RobustnessReport:
    """What :func:`evaluate` measured.

    ``robust_acc = (1/n) Σ_i 1[f(x_i) = y_i ∧ ∀a: f(a(x_i)) = y_i]`` (the per-example worst case
    over ``attacks``); ``attacks[name]["acc"]`` is the accuracy after the attacks up to and
    including ``name`` (they run in order, each on the examples still correct).
    """

    eps: float
    n: int
    clean_acc: float
    robust_acc: float
    attacks: dict[str, dict[str, float]]
    sanity: list[SanityCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sanity_passed(self) -> bool | None:
        """True when every sanity check passed; None when none ran."""
        return None if not self.sanity else all(c.passed for c in self.sanity)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of ``robust_acc`` (95 % for ``z = 1.96``)."""
        if self.n == 0:
            return (0.0, 1.0)
        p, n = self.robust_acc, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the sanity checks as ``{"name", "passed", "detail"}``)."""
        out = asdict(self)
        out["sanity"] = [asdict(c) for c in self.sanity]
        out["robust_interval"] = list(self.interval())
        return out

    def __str__(self) -> str:
        lo, hi = self.interval()
        lines = [f"L∞ ε = {self.eps:g}, n = {self.n}",
                 f"  clean accuracy            {100 * self.clean_acc:6.2f} %"]
        lines += [f"  after {name:<20}{100 * r['acc']:6.2f} %" for name, r in self.attacks.items()]
        lines.append(f"  robust (worst case)       {100 * self.robust_acc:6.2f} %  "
                     f"(95 % interval {100 * lo:.2f}–{100 * hi:.2f})")
        for c in self.sanity:
            lines.append(f"  sanity {c.name}: {'pass' if c.passed else 'FAIL'} — {c.detail}")
        return "\n".join(lines)


def _as_dataset(data: Dataset | DataLoader | tuple[Tensor, Tensor]) -> Dataset:
    if isinstance(data, DataLoader):
        return data.dataset
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data=(images, labels) needs as many labels as images, got "
                             f"{x.shape[0]} images and {y.shape[0]} labels")
        return TensorDataset(x, y)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data  # type: ignore[return-value]
    raise TypeError(f"data must be a Dataset, a DataLoader or an (images, labels) pair of "
                    f"tensors, got {type(data).__name__}")


def _check_batch(x: Any, y: Any, model: nn.Module, device: torch.device) -> None:
    """Fail early, with what to do, on data an attack would silently mis-evaluate."""
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"data must yield float image tensors (N × C × H × W), got "
                         f"{type(x).__name__}{'' if not isinstance(x, Tensor) else x.dtype}; "
                         "apply transforms.ToTensor() to a torchvision dataset")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(f"images must lie in [0, 1] (the threat model's pixel box), got values in "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; drop Normalize from "
                         "the data transforms and put it inside the model instead")
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16,
                                                    torch.uint8):
        raise ValueError(f"labels must be an integer tensor of class indices, got "
                         f"{getattr(y, 'dtype', type(y).__name__)}")
    with torch.no_grad(), frozen(model, channels_last=False):
        logits = model(x[:1].to(device))
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape (N, classes), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}; wrap it so that "
                         "forward returns the logits tensor")
    if int(y.max()) >= logits.shape[1] or int(y.min()) < 0:
        raise ValueError(f"labels range over [{int(y.min())}, {int(y.max())}] but the model "
                         f"has {logits.shape[1]} outputs")


def evaluate(model: nn.Module, data: Dataset | DataLoader | tuple[Tensor, Tensor], *,
             eps: float = 8 / 255, attacks: Sequence[str] = DEFAULT_API_ATTACKS,
             n: int | None = None, batch_size: int = 256, sanity: bool = True,
             sanity_n: int = 1000, square_n: int = 200, square_queries: int = 5000,
             attack_kwargs: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
             device: torch.device | str | None = None) -> RobustnessReport:
    r"""Robust accuracy of ``model`` on ``data`` under L∞ attacks of radius ``eps``.

    Args:
        model: any classifier of images in ``[0, 1]`` to logits (normalisation inside).
        data: a ``Dataset`` or ``DataLoader`` of ``(image, label)`` or an ``(images, labels)``
            pair of tensors; the first ``n`` examples are used, in order.
        attacks: names from :data:`sstorch.attacks.ATTACKS`, run in order on the examples
            still correct (default PGD-50 with Madry's step 2.5ε/50, then the standard
            AutoAttack: APGD-CE, APGD-T, FAB-T, Square).
        sanity: run the sanity checks of :func:`sstorch.eval.sanity.sanity_checks` on the first
            ``sanity_n`` examples (Square on ``square_n``). A failed check means the attack
            numbers are not to be trusted (gradient masking, a randomised model, …).
        attack_kwargs: constructor arguments per attack, e.g. ``{"pgd": {"steps": 100}}``.

    The model is left as it was (training mode and ``requires_grad`` are restored). Each
    (attack, batch) pair is seeded from ``(seed, batch, attack)``: equal calls give equal
    numbers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    eps = _check_eps(eps)
    for what, v in (("n", n), ("batch_size", batch_size), ("sanity_n", sanity_n),
                    ("square_n", square_n), ("square_queries", square_queries)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{what} must be an integer ≥ 1, got {v!r}")
    names = [a for a in parse_attacks(list(attacks)) if a != "clean"]
    kw = dict(attack_kwargs or {})
    if unknown := set(kw) - set(names):
        raise ValueError(f"attack_kwargs names attacks not in {names}: {sorted(unknown)}")
    if "pgd" in names:
        kw.setdefault("pgd", {"steps": 50})
    dev = _device_of(model, device)
    ds = _as_dataset(data)
    if len(ds) == 0:
        raise ValueError("data is empty")
    if n is not None and n < len(ds):
        ds = Subset(ds, range(n))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    x0, y0 = next(iter(loader))
    _check_batch(x0, y0, model, dev)

    t0 = time.perf_counter()
    objs = {a: _make_attack(a, eps, seed, **kw.get(a, {})) for a in names}
    res = evaluate_attacks(model, loader, objs, eps, seed=seed, device=dev)
    checks: list[SanityCheck] = []
    if sanity:
        sub = ds if sanity_n >= len(ds) else Subset(ds, range(sanity_n))
        checks = sanity_checks(model, DataLoader(sub, batch_size=batch_size, shuffle=False),
                               eps, square_n=square_n, square_queries=square_queries,
                               seed=seed, device=dev)
    attack_rows = {a: {"acc": r["acc"], "seconds": r["seconds"],
                       "n_attacked": r["n_attacked"]} for a, r in res["attacks"].items()}
    return RobustnessReport(eps=eps, n=res["n"], clean_acc=res["clean_acc"],
                            robust_acc=res["robust_acc"], attacks=attack_rows, sanity=checks,
                            seconds=time.perf_counter() - t0)
