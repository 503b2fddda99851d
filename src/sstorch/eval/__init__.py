"""Robustness evaluation: clean and per-attack accuracy with the per-example worst case
(:mod:`~sstorch.eval.worst_case`), the sanity checks (:mod:`~sstorch.eval.sanity`), certified
radii (:mod:`~sstorch.eval.certify`) and the resumable journal (:mod:`~sstorch.eval.journal`);
``sstorch eval`` on a run directory (:mod:`~sstorch.eval.run`) and :func:`sstorch.evaluate` on
any model (:mod:`~sstorch.eval.api`)."""
