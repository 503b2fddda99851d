"""FAB-T: the targeted L∞ fast adaptive boundary attack (the AutoAttack minimum-norm component).

Croce & Hein, *Minimally distorted adversarial examples with a fast adaptive boundary attack*,
ICML 2020 (arXiv 1907.02044); targeted version as in AutoAttack (Croce & Hein, ICML 2020,
arXiv 2003.01690).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sstorch.attacks.base import Attack, check_counts, per_example, project_linf
from sstorch.attacks.registry import register_attack

__all__ = ["FABTargeted", "linf_hyperplane_projection"]


def linf_hyperplane_projection(points: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """Smallest L∞ step onto a hyperplane inside the box: ``argmin ‖δ‖_∞`` s.t. ``w·δ = c``,
    ``points + δ ∈ [0, 1]``, solved exactly per row.

    With ``σ_i = sign(w_i c)`` and ``u_i`` the room the box leaves in direction ``σ_i``
    (``1 − p_i`` or ``p_i``), the best progress at radius ``t`` is
    ``g(t) = Σ_i |w_i| min(t, u_i)``: piecewise linear, nondecreasing, concave. Sorting the
    ``u_i`` gives ``g`` at every breakpoint; the first breakpoint with ``g ≥ |c|`` brackets the
    root, where ``t = (|c| − Σ_{u_k < t} |w_k| u_k) / Σ_{u_k ≥ t} |w_k|`` (O(d log d) per row).
    The step is ``δ_i = σ_i min(t, u_i)`` (0 where ``w_i = 0``). If the hyperplane cannot be
    reached inside the box (``g(∞) < |c|``), the box corner that gets closest,
    ``δ_i = σ_i u_i``, is returned.

    Parameters
    ----------
    points : Tensor
        ``(n, d)`` points in ``[0, 1]``.
    w : Tensor
        ``(n, d)`` hyperplane normals.
    c : Tensor
        ``(n,)`` required values of ``w·δ``.

    Returns
    -------
    Tensor
        ``(n, d)`` steps ``δ``.

    >>> delta = linf_hyperplane_projection(x.flatten(1), grad.flatten(1), -g)
    >>> (grad.flatten(1) * delta).sum(1)  # == -g where the box allows it
    """
    direction = torch.sign(w) * torch.sign(c)[:, None]
    room = torch.where(direction > 0, 1 - points, points).clamp(min=0)
    weight = w.abs() * (direction != 0)
    target = c.abs()
    t = _newton_radius(room, weight, target)
    todo = t.isnan()  # rows where Newton did not settle in its budget: exact sort below
    if bool(todo.any()):
        t[todo] = _sorted_radius(room[todo], weight[todo], target[todo])
    return direction * torch.minimum(room, t[:, None])


def _newton_radius(room: Tensor, weight: Tensor, target: Tensor, max_iter: int = 12) -> Tensor:
    """Root of ``g(t) = Σ w_i min(t, u_i) = |c|`` by Newton's method from the left.

    ``g`` is concave, nondecreasing and piecewise linear, so Newton steps from
    ``t₀ = |c| / Σ w ≤ t*`` increase monotonically and stop exactly at ``t*`` once the set of
    binding caps ``{u_i < t}`` no longer changes: ``t = (|c| − Σ_{u_i<t} w_i u_i) / Σ_{u_i≥t} w_i``.
    Infeasible rows (``g(∞) < |c|``) get ``inf``; rows not settled after ``max_iter`` steps get
    NaN (the caller falls back to the sort-based solution).
    """
    feasible = (weight * room).sum(1) >= target
    t = target / weight.sum(1).clamp(min=1e-30)
    binding = room < t[:, None]
    settled = torch.zeros_like(feasible)
    for _ in range(max_iter):
        free = (weight * ~binding).sum(1)
        t = (target - (weight * room * binding).sum(1)) / free.clamp(min=1e-30)
        new_binding = room < t[:, None]
        settled = (new_binding == binding).all(1)
        binding = new_binding
        if bool(settled.all()):
            break
    t = t.clamp(min=0)
    t = torch.where(settled, t, torch.full_like(t, float("nan")))
    return torch.where(feasible, t, torch.full_like(t, float("inf")))


def _sorted_radius(room: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    """The same root from the sorted breakpoints (O(d log d) per row, always exact)."""
    caps, order = room.sort(dim=1)
    u = weight.gather(1, order)
    uc = u * caps
    below = torch.cumsum(uc, dim=1).sub_(uc)  # Σ_{k<j} u_k a_k
    above = u.sum(1, keepdim=True) - torch.cumsum(u, dim=1).sub_(u)  # Σ_{k≥j} u_k
    reach = below + caps * above  # g(a_j)
    hit = reach >= target[:, None]
    feasible = hit.any(1)
    j = hit.int().argmax(1, keepdim=True)  # first breakpoint with g ≥ |c|
    t = (target[:, None] - below.gather(1, j)) / above.gather(1, j).clamp(min=1e-30)
    t = torch.where(feasible[:, None], t.clamp(min=0), torch.full_like(t, float("inf")))
    return t.squeeze(1)


@register_attack("fab-t")
class FABTargeted(Attack):
    """Targeted L∞ FAB (Croce & Hein 2020), the "FAB-T" of AutoAttack's standard version.

    Threat model: white box (gradients of the logits), ``‖x_adv − x‖_∞ ≤ ε``, ``x_adv ∈ [0, 1]``.
    FAB searches for the *minimally distorted* adversarial example and the attack succeeds on an
    example iff the smallest L∞ distortion it finds is ``≤ ε``. For each target ``t`` among the
    ``n_target_classes`` highest-scoring non-true classes (in order) and each restart, on the
    examples still robust, with ``g = f_t − f_y`` and ``x⁰ = x`` (restarts ``> 0``: a random
    point at L∞ distance ``ε/2``), ``n_iter`` times:

    1. linearise ``g`` at ``xⁱ``: the hyperplane ``π = {z : g(xⁱ) + ∇g(xⁱ)·(z − xⁱ) = 0}``;
    2. ``δⁱ = proj_∞(xⁱ, π ∩ [0,1]^d) − xⁱ`` and ``δ_orig = proj_∞(x, π ∩ [0,1]^d) − x``
       (exact, :func:`linf_hyperplane_projection`);
    3. ``α = min(‖δⁱ‖_∞ / (‖δⁱ‖_∞ + ‖δ_orig‖_∞), α_max)`` — the biased step toward ``x``;
    4. ``xⁱ⁺¹ = clip_[0,1]((1 − α)(xⁱ + η δⁱ) + α(x + η δ_orig))`` — η extrapolates past π;
    5. if ``xⁱ⁺¹`` is misclassified: keep it if ``‖xⁱ⁺¹ − x‖_∞`` is the smallest so far, then step
       back, ``xⁱ⁺¹ ← x + β(xⁱ⁺¹ − x)``.

    Successful examples return their minimal adversarial point projected into the ε-ball and
    the box (and re-checked to be misclassified); all others, and inputs the model already
    misclassifies, are returned unchanged. One forward–backward and one forward pass per
    iteration. Deterministic: restarts draw from the attack's ``torch.Generator(seed)``, always
    on the CPU (:attr:`generator_device`), so a seed gives the same starts on every device.

    Parameters
    ----------
    eps : float
        L∞ radius in pixel scale ([0, 1]).
    norm : str
        Only ``"Linf"`` is implemented.
    n_iter : int
        Iterations per target class and restart (default 100, as in AutoAttack).
    n_target_classes : int
        Number of target classes, highest logits first (default 9; capped at classes − 1).
    n_restarts : int
        Runs per target class; the first starts at ``x`` (default 1).
    alpha_max, eta, beta : float
        Maximal bias toward ``x``, extrapolation, backward step (defaults 0.1, 1.05, 0.9).
    seed : int or None
        Seed of the attack's own generator; ``None`` draws from torch's global RNG.

    >>> adv = FABTargeted(eps=8 / 255)(model, images, labels)
    >>> robust_acc = (model(adv).argmax(1) == labels).float().mean()
    """

    norms = ("Linf",)
    generator_device = "cpu"

    def __init__(self, eps: float, norm: str = "Linf", n_iter: int = 100,
                 n_target_classes: int = 9, n_restarts: int = 1, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, seed: int | None = 0) -> None:
        super().__init__(eps, norm=norm, seed=seed)
        check_counts(n_iter=n_iter, n_target_classes=n_target_classes, n_restarts=n_restarts)
        if not 0 <= alpha_max <= 1:
            raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
        if not eta >= 1:
            raise ValueError(f"eta must be ≥ 1, got {eta}")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.n_iter, self.n_target_classes, self.n_restarts = n_iter, n_target_classes, n_restarts
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def __repr__(self) -> str:
        return (f"FABTargeted(eps={self.eps}, norm={self.norm!r}, n_iter={self.n_iter}, "
                f"n_target_classes={self.n_target_classes}, n_restarts={self.n_restarts}, "
                f"alpha_max={self.alpha_max}, eta={self.eta}, beta={self.beta}, seed={self.seed})")

    def _run(self, model: nn.Module, x: Tensor, labels: Tensor, targets: Tensor,
             start: Tensor) -> tuple[Tensor, Tensor]:
        """One FAB run from ``start``: the minimal-norm adversarial points and their norms."""
        n = len(x)
        flat = x.flatten(1)
        rows = torch.arange(n, device=x.device)
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        xi = start.clone()
        for _ in range(self.n_iter):
            with torch.enable_grad():
                xi.requires_grad_(True)
                logits = model(xi)
                g = logits[rows, targets] - logits[rows, labels]
                (grad,) = torch.autograd.grad(g.sum(), xi)
            g, w, xi = g.detach(), grad.flatten(1), xi.detach()
            xi_flat = xi.flatten(1)
            # Both points onto the same linearised boundary, in one batched projection.
            c_orig = -(g + (w * (flat - xi_flat)).sum(1))
            d = linf_hyperplane_projection(torch.cat([xi_flat, flat]), torch.cat([w, w]),
                                           torch.cat([-g, c_orig]))
            d_i, d_o = d[:n], d[n:]
            a_i, a_o = d_i.abs().amax(1), d_o.abs().amax(1)
            alpha = (a_i / (a_i + a_o)).nan_to_num(0.0).clamp(0, self.alpha_max)[:, None]
            step = (1 - alpha) * (xi_flat + self.eta * d_i) + alpha * (flat + self.eta * d_o)
            xi = step.clamp(0, 1).view_as(x)
            with torch.no_grad():
                is_adv = model(xi).argmax(1) != labels
            dist = (xi - x).flatten(1).abs().amax(1)
            better = is_adv & (dist < best_norm)
            best[better], best_norm[better] = xi[better], dist[better]
            xi[is_adv] = x[is_adv] + self.beta * (xi[is_adv] - x[is_adv])
        return best, best_norm

    def _start(self, xs: Tensor, gen: torch.Generator | None) -> Tensor:
        """A restart's start ``clip_[0,1](x + (ε/2) r / ‖r‖_∞)``, ``r ~ U(−1, 1)`` (drawn on the
        generator's device, then moved to ``x``'s)."""
        r = torch.rand(xs.shape, generator=gen).to(xs) * 2 - 1
        scale = r.flatten(1).abs().amax(1).clamp(min=1e-12)
        return (xs + 0.5 * self.eps * r / per_example(scale, xs)).clamp(0, 1)

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        """For each target in turn, FAB on the still-robust examples; successes projected."""
        adv = x.clone()
        with torch.no_grad():
            logits = model(x)
        robust = logits.argmax(1) == labels
        ranked = logits.argsort(1, descending=True)  # ranked[:, 0] is the label where robust
        n_targets = min(self.n_target_classes, logits.shape[1] - 1)
        for k in range(1, n_targets + 1):
            for restart in range(self.n_restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    return adv
                xs, ys = x[idx], labels[idx]
                start = self._start(xs, gen) if restart > 0 else xs
                best, best_norm = self._run(model, xs, ys, ranked[idx, k], start)
                cand = project_linf(best, xs, self.eps)
                with torch.no_grad():
                    fooled = model(cand).argmax(1) != ys
                ok = (best_norm <= self.eps) & fooled
                adv[idx[ok]] = cand[ok]
                robust[idx[ok]] = False
        return adv
