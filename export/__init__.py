"""Exported forms of emolive's models: ONNX files (and TensorRT engines) built from the code.

* :mod:`export.renderer`: the renderer as a batch-capable torch module (the GPU form of
  :class:`engine.render.Renderer`);
* :mod:`export.onnx_export`: its ONNX export, checked and cached by content hash;
* :mod:`export.runtime`: :class:`~export.runtime.OnnxRenderer`, the same interface run by
  ONNX Runtime;
* :mod:`export.registry`: what ``emolive export`` can export, by name;
* :mod:`export.trt`: TensorRT engines from the ONNX files, where a GPU and tensorrt exist;
* :mod:`export.parity`: the motion sweep that compares an export with the CPU renderer.

Nothing here is imported by the engine: exports are optional build outputs.
"""
