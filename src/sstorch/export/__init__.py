"""Deployment: ONNX export with parity checks (:mod:`~sstorch.export.onnx`, over ``graph``,
``parity``, ``quantize`` and ``report``) and packed sparse weights
(:mod:`~sstorch.export.sparse`)."""
