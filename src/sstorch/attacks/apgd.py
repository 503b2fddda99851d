"""Auto-PGD (APGD): a step-size-free PGD with momentum, for L∞ and L2.

Croce & Hein, *Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks*, ICML 2020 (arXiv 2003.01690), Algorithm 1. Same contract as
:mod:`sstorch.attacks.pgd`: ``attack(model, images, labels) -> adv_images`` with images in
``[0, 1]``, normalization inside the model, output detached, in the ε-ball and in ``[0, 1]``.
The caller chooses the model's mode (evaluation uses ``model.eval()``).

One run of APGD on the objective ``f`` (CE, DLR or targeted DLR) is, with ``P`` the projection
onto ``B_ε(x) ∩ [0, 1]^d`` and ``s(g)`` the steepest-ascent direction (``sign g`` for L∞,
``g / ‖g‖₂`` for L2)::

    x⁰ = P(x + random start),  η = 2ε
    x¹ = P(x⁰ + η s(∇f(x⁰)))
    z^{k+1} = P(x^k + η s(∇f(x^k)))
    x^{k+1} = P(x^k + α (z^{k+1} − x^k) + (1 − α)(x^k − x^{k−1})),   α = 0.75

At the checkpoints ``w_j = ⌈p_j N⌉`` (``p_0 = 0``, ``p_1 = 0.22``,
``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``) the step size of an example is halved,
and its iterate restarted from the best point found so far (with its momentum reset), when

1. fewer than ``ρ·(w_j − w_{j−1})`` of the steps since ``w_{j−1}`` increased ``f``, or
2. neither its step size nor its best objective value changed since ``w_{j−1}``.

Per example the attack returns the point with the lowest margin ``z_y − max_{j≠y} z_j`` over all
iterates and restarts; an example stops being attacked once it is misclassified, and examples the
model already gets wrong are returned unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sstorch.attacks.base import Attack, check_counts, check_labels, per_example, project_linf
from sstorch.attacks.losses import dlr_loss, dlr_targeted_loss, margin
from sstorch.attacks.registry import register_attack

__all__ = ["APGD", "APGDTargeted", "checkpoints", "dlr_loss", "dlr_targeted_loss", "margin"]


def checkpoints(n_iter: int) -> list[int]:
    """The iterations ``w_1 < w_2 < …`` (all in ``[1, n_iter − 1]``) where step sizes may halve.

    >>> checkpoints(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    """
    out: list[int] = []
    p_prev, p = 0.0, 0.22
    while p <= 1:
        w = math.ceil(round(p * n_iter, 9))  # round: 0.41·100 must give 41, not 42
        if 1 <= w < n_iter and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def _check(n_iter: int, n_restarts: int, rho: float, momentum: float) -> None:
    check_counts(n_iter=n_iter, n_restarts=n_restarts)
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if not 0 < momentum <= 1:
        raise ValueError(f"momentum must be in (0, 1], got {momentum}")


class APGD(Attack):
    r"""Auto-PGD (Croce & Hein 2020) with the cross-entropy or the DLR loss, untargeted.

    Threat model: ``‖x_adv − x‖_p ≤ ε`` with ``p = ∞`` (``norm="Linf"``) or ``p = 2``
    (``norm="L2"``), and ``x_adv ∈ [0, 1]``. Each of ``n_restarts`` runs starts at a random
    point of the ball (L∞: uniform in the box, L2: on the sphere) and makes ``n_iter`` steps
    (``n_iter + 1`` gradient evaluations) with the step-size schedule of the module docstring;
    a restart only attacks the examples that are still classified correctly.

    Parameters
    ----------
    eps : float
        Radius of the threat model, in pixel units (``[0, 1]`` for L∞).
    norm : {"Linf", "L2"}
        The norm of the threat model. Default ``"Linf"``.
    n_iter : int
        Iterations per run ``N``. Default 100 (AutoAttack's).
    n_restarts : int
        Random restarts. Default 1.
    loss : {"ce", "dlr"}
        Cross-entropy (APGD-CE) or difference of logits ratio (APGD-DLR). Default ``"ce"``.
    rho : float
        Condition 1's fraction of successful steps ``ρ``. Default 0.75.
    seed : int or None
        Seed of the random starts (:class:`~sstorch.attacks.base.Attack`'s local generator:
        the global RNG is left alone, and two calls with the same inputs give the same output);
        ``None`` draws from torch's global RNG.
    momentum : float
        ``α``, the weight of the new step against the previous one. Default 0.75.

    Examples
    --------
    >>> attack = APGD(eps=8 / 255, norm="Linf", n_iter=100, loss="ce")
    >>> adv_images = attack(model, images, labels)
    """

    def __init__(self, eps: float, norm: str = "Linf", n_iter: int = 100, n_restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, seed: int | None = 0,
                 momentum: float = 0.75) -> None:
        super().__init__(eps, norm=norm, seed=seed)
        _check(n_iter, n_restarts, rho, momentum)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        self.n_iter, self.n_restarts = n_iter, n_restarts
        self.loss, self.rho, self.momentum = loss, rho, momentum

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, "
                f"n_iter={self.n_iter}, n_restarts={self.n_restarts}, loss={self.loss!r})")

    # -- objective ---------------------------------------------------------------------------

    def _objective(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        if self.loss == "dlr":
            return dlr_loss(logits, labels)
        return F.cross_entropy(logits, labels, reduction="none")

    def _eval(self, model: nn.Module, x: Tensor, labels: Tensor,
              targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``f`` per example, ``∇_x Σ f`` and the margin, from one forward-backward pass."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = model(x)
            loss = self._objective(logits, labels, targets)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad.detach(), margin(logits.detach(), labels)

    # -- geometry ----------------------------------------------------------------------------

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Nearest point of ``B_p(x, ε) ∩ [0, 1]^d``; L2 scales ``δ`` by
        ``min(1, ε / (‖δ‖₂ + 10⁻¹²))`` (the reference's round-off, not the base's clamp)."""
        if self.norm == "Linf":
            return project_linf(x_adv, x, self.eps)
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1)
        delta = delta * per_example((self.eps / (norms + 1e-12)).clamp(max=1.0), x)
        # Clipping to [0, 1] moves every coordinate towards x ∈ [0, 1]: it stays in the ball.
        return (x + delta).clamp(0, 1)

    def _direction(self, grad: Tensor) -> Tensor:
        """``s(g)``: ``sign g`` (L∞) or ``g / (‖g‖₂ + 10⁻¹²)`` (L2)."""
        if self.norm == "Linf":
            return grad.sign()
        return grad / per_example(grad.flatten(1).norm(dim=1) + 1e-12, grad)

    def _random_start(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        if self.norm == "Linf":
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            return self.project(x + self.eps * (2 * u - 1), x)
        g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return self.project(x + self.eps * self._direction(g), x)

    # -- one run -----------------------------------------------------------------------------

    def _run(self, model: nn.Module, x: Tensor, labels: Tensor, targets: Tensor | None,
             gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One APGD run from a random start: the lowest-margin point and its margin per example."""
        n, marks = x.shape[0], set(checkpoints(self.n_iter))
        x_cur = self._random_start(x, gen)
        loss, grad, marg = self._eval(model, x_cur, labels, targets)
        best_x, best_marg = x_cur.clone(), marg.clone()
        # The state of the examples still attacked; `idx` maps them back into the batch.
        s: dict[str, Any] = {
            "idx": torch.arange(n, device=x.device), "x": x, "y": labels, "t": targets,
            "x_cur": x_cur, "x_prev": x_cur, "loss": loss, "grad": grad,
            "x_max": x_cur.clone(), "f_max": loss.clone(), "grad_max": grad.clone(),
            "eta": torch.full((n,), 2 * self.eps, device=x.device, dtype=x.dtype),
            "n_up": torch.zeros(n, device=x.device), "f_max_mark": loss.clone(),
            "halved": torch.zeros(n, dtype=torch.bool, device=x.device),
        }
        s = _keep(s, marg >= 0)
        last_mark = 0
        for k in range(self.n_iter):
            if s["idx"].numel() == 0:
                break
            x_cur, x0 = s["x_cur"], s["x"]
            z = self.project(x_cur + per_example(s["eta"], x0) * self._direction(s["grad"]), x0)
            if k == 0:
                x_new = z
            else:
                a = self.momentum
                x_new = self.project(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - s["x_prev"]),
                                      x0)
            loss, grad, marg = self._eval(model, x_new, s["y"], s["t"])
            s["n_up"] += (loss > s["loss"]).to(s["n_up"].dtype)
            up = loss > s["f_max"]
            s["x_max"][up], s["f_max"][up], s["grad_max"][up] = x_new[up], loss[up], grad[up]
            s["x_prev"], s["x_cur"], s["loss"], s["grad"] = x_cur, x_new, loss, grad
            better = marg < best_marg[s["idx"]]
            best_x[s["idx"][better]] = x_new[better]
            best_marg[s["idx"][better]] = marg[better]
            if k + 1 in marks:
                window = k + 1 - last_mark
                last_mark = k + 1
                cond1 = s["n_up"] < self.rho * window
                cond2 = ~s["halved"] & (s["f_max"] <= s["f_max_mark"])
                halve = cond1 | cond2
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                s["x_cur"] = torch.where(per_example(halve, x0), s["x_max"], s["x_cur"])
                s["x_prev"] = torch.where(per_example(halve, x0), s["x_max"], s["x_prev"])
                s["grad"] = torch.where(per_example(halve, x0), s["grad_max"], s["grad"])
                s["loss"] = torch.where(halve, s["f_max"], s["loss"])
                s["halved"], s["f_max_mark"] = halve, s["f_max"].clone()
                s["n_up"] = torch.zeros_like(s["n_up"])
            if (marg < 0).any():
                s = _keep(s, marg >= 0)
        return best_x, best_marg

    # -- the attack --------------------------------------------------------------------------

    def _targets(self, clean_logits: Tensor) -> list[Tensor | None]:
        return [None]

    def check_inputs(self, images: Tensor, labels: Tensor) -> None:
        """Refuse labels that are not ``(N,)`` for ``(N, ...)`` images."""
        check_labels(images, labels)

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        """Per example the lowest-margin point over every target and restart."""
        with torch.no_grad():
            clean_logits = model(x)
        best_x, best_marg = x.clone(), margin(clean_logits, labels)
        for targets in self._targets(clean_logits):
            for _ in range(self.n_restarts):
                todo = (best_marg >= 0).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return best_x
                t = None if targets is None else targets[todo]
                cand_x, cand_marg = self._run(model, x[todo], labels[todo], t, gen)
                better = cand_marg < best_marg[todo]
                best_x[todo[better]] = cand_x[better]
                best_marg[todo[better]] = cand_marg[better]
        return best_x


@register_attack("apgd-ce")
def _apgd_ce(eps: float, seed: int | None = 0, **kwargs: Any) -> APGD:
    return APGD(eps, seed=seed, **{"loss": "ce", **kwargs})


@register_attack("apgd-t")
class APGDTargeted(APGD):
    r"""APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, one run per target class.

    For each example the targets are the classes ranked 2nd, 3rd, …, ``(n_target_classes+1)``-th
    by the clean logits; the run for the ``t``-th target maximizes

    ``DLR-T(x, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``  (``π``: logits sorted, decreasing)

    and only attacks the examples that every earlier run left classified correctly. Threat
    model, step-size schedule and outputs as :class:`APGD`; the model needs ≥ 4 classes, and
    ``n_target_classes`` is capped at ``classes − 1``.

    Parameters
    ----------
    eps, norm, n_iter, n_restarts, rho, seed, momentum
        As :class:`APGD` (defaults ``norm="Linf"``, ``n_iter=100``, ``n_restarts=1``).
    n_target_classes : int
        Number of target classes per example. Default 9 (AutoAttack's).

    Examples
    --------
    >>> attack = APGDTargeted(eps=8 / 255, n_target_classes=9)
    >>> adv_images = attack(model, images, labels)
    """

    def __init__(self, eps: float, norm: str = "Linf", n_iter: int = 100, n_restarts: int = 1,
                 n_target_classes: int = 9, rho: float = 0.75, seed: int | None = 0,
                 momentum: float = 0.75) -> None:
        super().__init__(eps, norm, n_iter, n_restarts, "ce", rho, seed, momentum)
        check_counts(n_target_classes=n_target_classes)
        self.loss, self.n_target_classes = "dlr-targeted", n_target_classes

    def __repr__(self) -> str:
        return (f"APGDTargeted(eps={self.eps:g}, norm={self.norm!r}, n_iter={self.n_iter}, "
                f"n_restarts={self.n_restarts}, n_target_classes={self.n_target_classes})")

    def _objective(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        assert targets is not None
        return dlr_targeted_loss(logits, labels, targets)

    def _targets(self, clean_logits: Tensor) -> list[Tensor | None]:
        n_classes = clean_logits.shape[1]
        if n_classes < 4:
            raise ValueError(f"the targeted DLR loss needs ≥ 4 classes, the model has {n_classes}")
        order = clean_logits.argsort(dim=1, descending=True)
        return [order[:, r] for r in range(1, min(self.n_target_classes, n_classes - 1) + 1)]


def _keep(state: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The run's state restricted to the examples in the boolean mask ``keep``."""
    return {k: None if v is None else v[keep] for k, v in state.items()}
