"""Files: atomic writes and run-directory locks (:mod:`~sstorch.io.fsutil`), safetensors
checkpoints (:mod:`~sstorch.io.checkpoint`)."""
