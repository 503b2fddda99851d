"""Square Attack: a score-based black-box L∞ adversary (the AutoAttack black-box component).

Andriushchenko, Croce, Flammarion, Hein, *Square Attack: a query-efficient black-box adversarial
attack via random search*, ECCV 2020 (arXiv 1912.00049).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .attacks import cw_margin_loss

__all__ = ["Square"]

# Iterations (on a 10,000-query scale) after which the square's area fraction p halves.
_P_CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _margin(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """``z_y − max_{j≠y} z_j`` on the logits: positive iff the model still predicts ``y``."""
    return -cw_margin_loss(model(x), labels)


class Square:
    """L∞ Square Attack (Andriushchenko et al. 2020): random search on the margin, no gradients.

    Threat model: score-based black box — only the logits ``z = f(x)`` are read, never a
    gradient; ``‖x_adv − x‖_∞ ≤ ε``, ``x_adv ∈ [0, 1]``. Random search minimises the margin
    ``L(x') = z_y(x') − max_{j≠y} z_j(x')``:

    1. start at vertical stripes ``x' = clip(x + δ)``, ``δ[c, :, w] = ±ε`` drawn per channel and
       column (one query);
    2. at query ``i`` draw a square window of side ``s = max(round(√(p(i)·H·W)), 1)`` at a random
       position, set ``δ`` there to a fresh ``±ε`` per channel (a proposal that would leave the
       window unchanged is redrawn, as in the authors' code; no query is spent on it) and keep
       the proposal iff ``L`` decreases;
    3. ``p(i) = p_init / 2^k`` where ``k`` counts the checkpoints 10, 50, 200, 500, 1000, 2000,
       4000, 6000, 8000 passed by ``i · 10000 / n_queries``.

    An example stops as soon as ``L ≤ 0`` (misclassified), and only still-robust examples are
    queried. Clean inputs the model already misclassifies are returned unchanged; the
    clean-accuracy check is not counted as a query (the reference convention), the stripe start
    is. After a call, ``queries_`` holds the per-example query count (``≤ n_queries``; 0 for
    inputs already misclassified). Each example draws its own window and signs from a local
    ``torch.Generator(seed)``, so results are deterministic and leave the global RNG untouched.

    Parameters
    ----------
    eps : float
        L∞ radius in pixel scale ([0, 1]).
    norm : str
        Only ``"Linf"`` is implemented.
    n_queries : int
        Query budget per example (default 5000, as in AutoAttack).
    p_init : float
        Initial fraction of pixels the square covers (default 0.8).
    seed : int
        Seed of the attack's own generator.

    >>> adv = Square(eps=8 / 255, n_queries=5000)(model, images, labels)
    >>> robust_acc = (model(adv).argmax(1) == labels).float().mean()
    """

    def __init__(self, eps: float, norm: str = "Linf", n_queries: int = 5000,
                 p_init: float = 0.8, seed: int = 0) -> None:
        if norm != "Linf":
            raise ValueError(f"only norm='Linf' is implemented, got {norm!r}")
        if not 0 <= eps <= 1:  # also rejects NaN
            raise ValueError(f"eps must be in [0, 1] (pixel scale), got {eps}")
        if n_queries < 1:
            raise ValueError(f"n_queries must be ≥ 1, got {n_queries}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.eps, self.norm, self.n_queries = eps, norm, n_queries
        self.p_init, self.seed = p_init, seed
        self.queries_: Tensor | None = None

    def __repr__(self) -> str:
        return (f"Square(eps={self.eps}, norm={self.norm!r}, n_queries={self.n_queries}, "
                f"p_init={self.p_init}, seed={self.seed})")

    def p_schedule(self, it: int) -> float:
        """Square area fraction at iteration ``it`` (0-based, after the stripe start)."""
        scaled = int(it / self.n_queries * 10000)
        return self.p_init / 2 ** sum(scaled > c for c in _P_CHECKPOINTS)

    def _signs(self, gen: torch.Generator, shape: tuple[int, ...], like: Tensor) -> Tensor:
        s = torch.randint(0, 2, shape, generator=gen, device=gen.device).to(like.dtype)
        return 2 * s - 1

    def _attack(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        eps = self.eps
        x_best = (x + eps * self._signs(gen, (n, c, 1, w), x)).clamp(0, 1)
        margin = _margin(model, x_best, labels)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for it in range(self.n_queries - 1):
            active = (margin > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            na = active.numel()
            s = min(max(round(math.sqrt(self.p_schedule(it) * h * w)), 1), h, w)
            top = torch.randint(0, h - s + 1, (na,), generator=gen, device=gen.device)
            left = torch.randint(0, w - s + 1, (na,), generator=gen, device=gen.device)
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)  # (na, H)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)  # (na, W)
            window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (na, 1, H, W)
            xa, xb = x[active], x_best[active]
            x_new = torch.where(window, (xa + eps * self._signs(gen, (na, c, 1, 1), x)).clamp(0, 1),
                                xb)
            same = (x_new == xb).flatten(1).all(1)
            for _ in range(16):  # redraw the signs of proposals that change nothing
                if not bool(same.any()):
                    break
                r = same.nonzero().squeeze(1)
                cand = (xa[r] + eps * self._signs(gen, (r.numel(), c, 1, 1), x)).clamp(0, 1)
                x_new[r] = torch.where(window[r], cand, xb[r])
                same[r] = (x_new[r] == xb[r]).flatten(1).all(1)
            m_new = _margin(model, x_new, labels[active])
            queries[active] += 1
            better = m_new < margin[active]
            x_best[active[better]] = x_new[better]
            margin[active[better]] = m_new[better]
        return x_best, queries

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """Return ``x_adv`` (detached) for ``images`` in [0, 1] of shape ``(N, C, H, W)``."""
        if images.dim() != 4:
            raise ValueError(f"Square expects (N, C, H, W) images, got {tuple(images.shape)}")
        x = images.detach()
        adv = x.clone()
        self.queries_ = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if self.eps == 0 or len(x) == 0:
            return adv
        # on the images' device: no host-to-device copy (a GPU sync) per query; on a GPU the
        # random stream therefore differs from the CPU's for the same seed
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        with torch.no_grad():
            todo = (_margin(model, x, labels) > 0).nonzero().squeeze(1)
            if todo.numel():
                adv[todo], self.queries_[todo] = self._attack(model, x[todo], labels[todo], gen)
        return adv
