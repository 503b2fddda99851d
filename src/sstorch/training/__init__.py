"""Adversarial training (:mod:`~sstorch.training.loop`) and robust distillation
(:mod:`~sstorch.training.distill`)."""
