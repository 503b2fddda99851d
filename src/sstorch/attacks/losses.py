"""Per-example objectives of the attacks, on the logits ``z`` (shape ``(N, classes)``).

One function per quantity: the margin ``z_y − max_{j≠y} z_j`` (APGD's and Square's stopping
test), its negation the Carlini–Wagner loss (PGD's ``loss="cw"``), and the difference of logits
ratio losses of APGD (Croce & Hein 2020, arXiv 2003.01690).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["cw_margin_loss", "dlr_loss", "dlr_targeted_loss", "margin"]


def cw_margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` per example (positive = misclassified)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    return other.amax(1) - true


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_y − max_{j≠y} z_j`` per example: negative iff the example is misclassified.

    Exactly ``−cw_margin_loss`` (IEEE subtraction is antisymmetric, so no bit changes).
    """
    return -cw_margin_loss(logits, labels)


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of logits ratio ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3)`` per example.

    ``π`` sorts the logits in decreasing order; the ratio is invariant to shifting and rescaling
    the logits, so it does not saturate the way cross-entropy does. Needs ≥ 3 classes.
    """
    z = logits.sort(dim=1, descending=True).values
    return -margin(logits, labels) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Targeted DLR ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)`` per example (≥ 4 classes)."""
    z = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)
