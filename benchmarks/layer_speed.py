"""Regenerate ``docs/benchmarks.md``: SeparableLinear vs dense and tensorly-torch layers.

Thin wrapper around :func:`sstorch.experiments.layer_bench_md.main_layer_bench` (also
``sstorch bench``) that adds this project's acceptance bars (``BARS``); all its options
apply, e.g. a quick run::

    python benchmarks/layer_speed.py --batch-scale 0.25 --repeats 5 --out-md /tmp/quick.md

Without ``--out-md`` the report goes to ``docs/benchmarks.md`` next to this folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sstorch.experiments.layer_bench_md import SpeedBar, main_layer_bench

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

# This project's bars, on VGG-16's first FC layer (512×7×7) → (16×16×16), batch 64: the
# separable layer is worth it only if it is much faster than the dense one it replaces and no
# slower than tensorly-torch's factorized layer of the same shapes.
BARS = (
    SpeedBar("vgg-fc1", "dense", 50.0,
             "`vgg-fc1`: SeparableLinear fwd+bwd ≥ 50× faster than nn.Linear(25088, 4096)"),
    SpeedBar("vgg-fc1", "tcl", 1.0,
             "`vgg-fc1`: SeparableLinear fwd+bwd not slower than tltorch TCL"),
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--out-md" or a.startswith("--out-md=") for a in argv):
        argv += ["--out-md", os.path.relpath(DEFAULT_OUT)]
    return main_layer_bench(argv, prog="python benchmarks/layer_speed.py", bars=BARS)


if __name__ == "__main__":
    raise SystemExit(main())
