"""Adversarial training (:func:`sstorch.training.loop.train`; the objectives in
:mod:`~sstorch.training.objectives`) and robust distillation (:mod:`~sstorch.training.distill`)."""
