"""Square Attack: a score-based black-box L∞ adversary (the AutoAttack black-box component).

Andriushchenko, Croce, Flammarion, Hein, *Square Attack: a query-efficient black-box adversarial
attack via random search*, ECCV 2020 (arXiv 1912.00049).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sstorch.attacks.base import Attack, check_counts
from sstorch.attacks.losses import margin
from sstorch.attacks.registry import register_attack

__all__ = ["Square"]

# Iterations (on a 10,000-query scale) after which the square's area fraction p halves.
_P_CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Queries between two gathers of the still-robust examples (the only host syncs of the search).
_CHUNK = 100


def _margin(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """``z_y − max_{j≠y} z_j`` on the logits: positive iff the model still predicts ``y``."""
    return margin(model(x), labels)


@register_attack("square")
class Square(Attack):
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
    inputs already misclassified). Each example draws its own window and signs from the attack's
    ``torch.Generator(seed)`` (on the images' device: no host-to-device copy, i.e. no GPU sync,
    per query; on a GPU the stream therefore differs from the CPU's for the same seed), so
    results are deterministic and leave the global RNG untouched.

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
    seed : int or None
        Seed of the attack's own generator; ``None`` draws from torch's global RNG.

    >>> adv = Square(eps=8 / 255, n_queries=5000)(model, images, labels)
    >>> robust_acc = (model(adv).argmax(1) == labels).float().mean()
    """

    norms = ("Linf",)

    def __init__(self, eps: float, norm: str = "Linf", n_queries: int = 5000,
                 p_init: float = 0.8, seed: int | None = 0) -> None:
        super().__init__(eps, norm=norm, seed=seed)
        check_counts(n_queries=n_queries)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.n_queries, self.p_init = n_queries, p_init
        self.queries_: Tensor | None = None

    def __repr__(self) -> str:
        return (f"Square(eps={self.eps}, norm={self.norm!r}, n_queries={self.n_queries}, "
                f"p_init={self.p_init}, seed={self.seed})")

    def p_schedule(self, it: int) -> float:
        """Square area fraction at iteration ``it`` (0-based, after the stripe start)."""
        scaled = int(it / self.n_queries * 10000)
        return self.p_init / 2 ** sum(scaled > c for c in _P_CHECKPOINTS)

    def _signs(self, gen: torch.Generator | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Uniform ``±1`` of ``shape``, on ``like``'s device and of its dtype."""
        s = torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype)
        return 2 * s - 1

    def _attack(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Random search in chunks of ``_CHUNK`` queries, with no host sync inside a chunk.

        At the start of a chunk the still-robust examples are gathered (one sync); inside it
        every query proposes for all of them and masks the update to those not yet fooled, so
        nothing waits for a GPU (a per-query gather, boolean index or ``.any()`` would). An
        example fooled mid-chunk is still evaluated until the chunk ends — at most
        ``_CHUNK − 1`` forward passes that can no longer change it, and not counted in
        ``queries_``.
        """
        n, c, h, w = x.shape
        eps = self.eps
        x_best = (x + eps * self._signs(gen, (n, c, 1, w), x)).clamp(0, 1)
        margin = _margin(model, x_best, labels)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        for start in range(0, self.n_queries - 1, _CHUNK):
            idx = (margin > 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            na = idx.numel()
            xa, ya, xb, m, q = x[idx], labels[idx], x_best[idx], margin[idx], queries[idx]
            up, down = (xa + eps).clamp(0, 1), (xa - eps).clamp(0, 1)  # a window's two values
            for it in range(start, min(start + _CHUNK, self.n_queries - 1)):
                active = m > 0
                s = min(max(round(math.sqrt(self.p_schedule(it) * h * w)), 1), h, w)
                top = torch.randint(0, h - s + 1, (na,), generator=gen, device=x.device)
                left = torch.randint(0, w - s + 1, (na,), generator=gen, device=x.device)
                in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)  # (na, H)
                in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)  # (na, W)
                window = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (na, 1, H, W)
                plus, minus = torch.where(window, up, xb), torch.where(window, down, xb)
                # A proposal that leaves the window unchanged is redrawn (authors' code). Only
                # the sign per channel matters, so draw the first sign vector and 16 redraws
                # at once and take the first that changes something: the distribution of
                # redrawing one at a time, without looking at each draw.
                same_plus = (plus == xb).flatten(2).all(2)  # (na, C)
                same_minus = (minus == xb).flatten(2).all(2)
                draws = torch.randint(0, 2, (17, na, c), generator=gen, device=x.device) > 0
                same = torch.where(draws, same_plus, same_minus).all(2)  # (17, na)
                first = (~same).to(torch.uint8).argmax(0)  # 0 when no draw changes anything
                sign = draws.gather(0, first.view(1, na, 1).expand(1, na, c))[0]  # (na, C)
                x_new = torch.where(sign[:, :, None, None], plus, minus)
                m_new = _margin(model, x_new, ya)
                better = active & (m_new < m)
                q += active
                xb = torch.where(better[:, None, None, None], x_new, xb)
                m = torch.where(better, m_new, m)
            x_best[idx], margin[idx], queries[idx] = xb, m, q
        return x_best, queries

    def check_inputs(self, images: Tensor, labels: Tensor) -> None:
        """Refuse images that are not ``(N, C, H, W)`` (the squares are spatial)."""
        if images.dim() != 4:
            raise ValueError(f"Square expects (N, C, H, W) images, got {tuple(images.shape)}")

    def reset(self, x: Tensor) -> None:
        """``queries_ ← 0`` for every example of the new batch."""
        self.queries_ = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def perturb(self, model: nn.Module, x: Tensor, labels: Tensor,
                gen: torch.Generator | None) -> Tensor:
        """Random search on the examples the model classifies correctly; counts their queries."""
        adv = x.clone()
        assert self.queries_ is not None  # set by reset()
        with torch.no_grad():
            todo = (_margin(model, x, labels) > 0).nonzero().squeeze(1)
            if todo.numel():
                adv[todo], self.queries_[todo] = self._attack(model, x[todo], labels[todo], gen)
        return adv
