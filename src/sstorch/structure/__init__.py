"""Working on whole models: surgery (:func:`~sstorch.structure.surgery.separate`,
``densify``), the sparsity + condition-number constraints and factor pruning, and the parameter /
nnz / MAC / byte accounting (:mod:`sstorch.structure.summary`)."""
