"""Files: atomic writes and run-directory locks (:mod:`~sstorch.io.fsutil`), safetensors
checkpoints (:mod:`~sstorch.io.checkpoint`, with their JSON codec and checksums in
:mod:`~sstorch.io.metadata` and the RNG states in :mod:`~sstorch.io.rng`)."""
