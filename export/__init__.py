"""Exported forms of emolive's models: ONNX files (and TensorRT engines) built from the code.

* :mod:`export.denoiser`: the motion denoiser's ONNX export (one sampler step of the DiT);
* :mod:`export.files`: what exports share: hashes, the up-to-date test, atomic writes,
  graph checks;
* :mod:`export.runtime`: ONNX Runtime's execution providers, best first;
* :mod:`export.registry`: what ``emolive export`` can export, by name;
* :mod:`export.trt`: TensorRT engines from the ONNX files, where a GPU and tensorrt exist.

The renderer has no exported form: it runs on the CPU only (:mod:`engine.render`).

Exports are build outputs. The engine imports only :mod:`export.denoiser`, lazily, when a
diffusion model runs on ONNX Runtime (:mod:`engine.motion.backends` exports the denoiser into
its cache on first use).
"""
