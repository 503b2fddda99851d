"""Deployment: ONNX export with parity checks (:mod:`~sstorch.export.onnx`) and packed sparse
weights (:mod:`~sstorch.export.sparse`)."""
