"""``emolive export``: the exporters the command line runs, by name (:mod:`emolive.export.registry`).

* :mod:`emolive.export.denoiser`: the motion denoiser's ONNX graph (built by
  :mod:`emolive.engine.motion.onnx_graph`), for shipping beside a deployment or building TensorRT
  engines ahead of time (:mod:`emolive.engine.motion.tensorrt`).

The renderer has no exported form: it runs on the CPU only (:mod:`emolive.engine.render`). Only the
CLI imports this package; the engine builds the graphs it runs into its own cache.
"""
