"""ONNX Runtime's execution providers for the exported graphs: :func:`choose_providers`.

The motion denoiser's ONNX Runtime and TensorRT backends (:mod:`engine.motion.backends`) run
with the best provider this onnxruntime build offers: TensorRT, then CUDA, then CPU.
"""

from __future__ import annotations

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str] | None = None) -> list[str]:
    """The preferred providers among ``available`` (default: onnxruntime's), best first."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = [name for name in PREFERRED_PROVIDERS if name in available]
    return chosen or ["CPUExecutionProvider"]
