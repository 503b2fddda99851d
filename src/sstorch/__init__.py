"""sstorch: lightweight, adversarially robust networks from separable structured transformations.

The paper's ideas, one module each:

* :mod:`sstorch.functional.kronecker` — Kronecker algebra: mode products, nearest Kronecker product.
* :mod:`sstorch.layers.separable` — :class:`SeparableLinear`, ``Y = X ×1 U1 ×2 U2 … ×K UK + b``.
* :mod:`sstorch.structure.constraints` — sparsity and condition-number penalties, factor pruning,
stats.
* :mod:`sstorch.structure.surgery` — :func:`separate` / :func:`densify` for any PyTorch model.
* :mod:`sstorch.structure.summary` — parameter, nnz, MAC and byte accounting.
* :mod:`sstorch.attacks` — FGSM, PGD, CW, APGD, FAB, Square, AutoAttack (one registry).
* :func:`sstorch.evaluate` — the full robustness evaluation (worst case over attacks, sanity
  checks) of any PyTorch classifier of images in [0, 1].
"""

from sstorch import attacks
from sstorch.eval.api import RobustnessReport, evaluate
from sstorch.functional.penalties import log_condition, logdet_condition
from sstorch.layers.separable import SeparableLinear
from sstorch.pruning.factor import prune_factors
from sstorch.structure.constraints import FactorRegularizer
from sstorch.structure.stats import layer_stats
from sstorch.structure.summary import summary
from sstorch.structure.surgery import densify, separate

__all__ = ["RobustnessReport", "SeparableLinear", "attacks", "densify", "evaluate", "separate",
           "summary"]
__all__ += [
    "FactorRegularizer", "layer_stats", "log_condition", "logdet_condition", "prune_factors"
]
__version__ = "0.1.0"
