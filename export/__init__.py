"""Exported forms of emolive's models: ONNX files (and TensorRT engines) built from the code.

* :mod:`export.renderer`: the renderer as a batch-capable torch module (the GPU form of
  :class:`engine.render.Renderer`);
* :mod:`export.onnx_export`: its ONNX export, checked and cached by content hash;
* :mod:`export.denoiser`: the motion denoiser's ONNX export (one sampler step of the DiT);
* :mod:`export.files`: what the exports share: hashes, the up-to-date test, atomic writes,
  graph checks;
* :mod:`export.runtime`: :class:`~export.runtime.OnnxRenderer`, the same interface run by
  ONNX Runtime;
* :mod:`export.registry`: what ``emolive export`` can export, by name;
* :mod:`export.trt`: TensorRT engines from the ONNX files, where a GPU and tensorrt exist;
* :mod:`export.parity`: the motion sweep that compares an export with the CPU renderer.

Exports are build outputs. The engine imports only :mod:`export.denoiser`, lazily, when a
diffusion model runs on ONNX Runtime (:mod:`engine.motion.backends` exports the denoiser into
its cache on first use).
"""
