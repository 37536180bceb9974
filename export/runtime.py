"""Run an exported renderer with ONNX Runtime: :class:`OnnxRenderer`.

Same interface as :class:`engine.render.Renderer` (``render(motion_row) -> (H, W, 3) uint8``)
plus ``render_batch(motion (B, C)) -> (B, H, W, 3)``, which renders several sessions' frames
in one call. The execution provider is the best one this onnxruntime build offers:
TensorRT, then CUDA, then CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.motion_space import NUM_CHANNELS

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str] | None = None) -> list[str]:
    """The preferred providers among ``available`` (default: onnxruntime's), best first."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = [name for name in PREFERRED_PROVIDERS if name in available]
    return chosen or ["CPUExecutionProvider"]


class OnnxRenderer:
    """Renders motion frames of one avatar with its exported renderer graph."""

    def __init__(self, model: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.path = Path(model)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or choose_providers())
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self._input = inputs[0].name
        self._output = outputs[0].name
        if inputs[0].shape[1] != NUM_CHANNELS:
            raise ValueError(f"{self.path.name}: expects {inputs[0].shape[1]} motion channels, this engine has {NUM_CHANNELS}")
        height, width = outputs[0].shape[1:3]
        self.image_size = (int(height), int(width))

    @classmethod
    def for_rig(cls, rig, out_dir: str | os.PathLike, content_hash: str, **kwargs) -> "OnnxRenderer":
        """Export the rig's renderer into ``out_dir`` if no up-to-date file is there, then load it."""
        from export.onnx_export import export_renderer_for_rig

        return cls(export_renderer_for_rig(rig, out_dir, content_hash).path, **kwargs)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def render_batch(self, motion: np.ndarray) -> np.ndarray:
        """(B, NUM_CHANNELS) motion rows -> (B, H, W, 3) uint8 RGB."""
        motion = np.ascontiguousarray(motion, dtype=np.float32)
        if motion.ndim != 2 or motion.shape[1] != NUM_CHANNELS or len(motion) == 0:
            raise ValueError(f"motion must be (B >= 1, {NUM_CHANNELS}), got {motion.shape}")
        return self.session.run([self._output], {self._input: motion})[0]

    def render(self, motion: np.ndarray) -> np.ndarray:
        """One motion frame (NUM_CHANNELS,) -> (H, W, 3) uint8 RGB."""
        return self.render_batch(np.asarray(motion, dtype=np.float32).reshape(1, -1))[0]
