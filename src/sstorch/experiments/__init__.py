"""Experiment tooling on top of the library: sweeps with claims (:mod:`~sstorch.experiments.sweep`),
run reports (:mod:`~sstorch.experiments.report`) and the layer benchmark
(:mod:`~sstorch.experiments.layer_bench`). The core library never imports this package."""
