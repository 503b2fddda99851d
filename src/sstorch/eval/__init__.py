"""Robustness evaluation: clean and per-attack robust accuracy with the per-example worst case,
the sanity checks, certified radii, and the resumable journal (:mod:`sstorch.eval.run`)."""
