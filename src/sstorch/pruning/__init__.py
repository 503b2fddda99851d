"""Pruning with persistent masks: Kronecker factors (:mod:`~sstorch.pruning.factor`), dense
``nn.Linear`` weights by magnitude (:mod:`~sstorch.pruning.magnitude`) or by HYDRA's learned
scores (:mod:`~sstorch.pruning.hydra`), and sparse inference of pruned layers
(:mod:`~sstorch.pruning.sparse`)."""
