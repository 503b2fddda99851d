"""Pruning with persistent masks: Kronecker factors (:mod:`~sstorch.pruning.factor`), dense
``nn.Linear`` weights by magnitude (:mod:`~sstorch.pruning.magnitude`) or by HYDRA's learned
scores (:mod:`~sstorch.pruning.hydra`), keeping pruned entries at zero through the steps of an
optimizer that asks for it (:mod:`~sstorch.pruning.masks`), and sparse inference of pruned
layers (:mod:`~sstorch.pruning.sparse`). Masks and scores are buffers of the layers; no
``forward`` is patched and no process-global hook is installed."""
