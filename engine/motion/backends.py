"""Where the motion denoiser runs: one interface (:class:`Denoiser`), three backends.

A denoiser maps one batch of :class:`DenoiserInputs` (numpy float32, batch first) to the
velocity of each row; :mod:`emolive.engine.motion.diffusion` runs the sampler around it, the same for
every backend:

* ``torch``: the :class:`~emolive.engine.motion.dit.MotionDiT` module itself, in inference mode;
* ``onnxruntime`` (the default): the exported graph (:mod:`emolive.engine.motion.onnx_graph`) in ONNX Runtime
  with the best execution provider this build has (TensorRT, then CUDA, then CPU; one intra-op
  thread on CPU, as sessions already run side by side);
* ``tensorrt``: the same graph on ONNX Runtime's TensorRT execution provider in fp16; refused
  (:class:`BackendUnavailable`) where this onnxruntime build or the machine lacks it.

The ONNX file is exported on first use into ``<cache>/onnx`` (``$EMOLIVE_CACHE_DIR`` or
``~/.cache/emolive``), named by content hash, so it is built once per weights file and never
downloaded. Denoisers are thread-safe and shared: one per weights file and backend.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:  # torch is imported where a denoiser is built, not to read BACKENDS
    from emolive.engine.motion.dit import MotionDiT

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")
DEFAULT_BACKEND = "onnxruntime"
TRT_PROVIDER = "TensorrtExecutionProvider"


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run on this machine; the message says why."""


class DenoiserInputs(NamedTuple):
    """One batch of denoiser inputs, float32, batch first (shapes: :mod:`emolive.engine.motion.onnx_graph`)."""

    x_t: np.ndarray  # (B, H, C) noisy hop frames, normalised
    t: np.ndarray  # (B,) diffusion time
    past: np.ndarray  # (B, K, C) rolling buffer, normalised
    audio: np.ndarray  # (B, A, 4, 80) log-mel window
    controls: np.ndarray  # (B, 4) head motion, speed, expressiveness, blink clock
    audio_missing: np.ndarray  # (B, A) 1 where the audio frame is padding


class Denoiser(Protocol):
    backend: str

    def __call__(self, inputs: DenoiserInputs) -> np.ndarray:
        """(B, H, C) float32 velocity of every row."""
        ...


class TorchDenoiser:
    """The torch module as a denoiser."""

    backend = "torch"

    def __init__(self, model: MotionDiT) -> None:
        self.model = model

    def __call__(self, inputs: DenoiserInputs) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(*(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs)).numpy()


class OnnxDenoiser:
    """An exported denoiser graph run by ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, *, backend: str = "onnxruntime", providers: list | None = None,
                 threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.backend = backend
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        self._inputs = [value.name for value in self.session.get_inputs()]
        if self._inputs != list(DenoiserInputs._fields):
            raise ValueError(f"{self.path.name}: inputs {self._inputs}, expected {list(DenoiserInputs._fields)}")
        self._output = self.session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, inputs: DenoiserInputs) -> np.ndarray:
        feed = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in zip(self._inputs, inputs)}
        return self.session.run([self._output], feed)[0]


def check_backend(backend: str) -> None:
    """ValueError for a name that is not a backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown motion backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (one line), or None when it can."""
    check_backend(backend)
    if backend != "tensorrt":
        return None
    import onnxruntime as ort

    from emolive.engine.motion.tensorrt import no_gpu_reason

    reasons = []
    if TRT_PROVIDER not in ort.get_available_providers():
        reasons.append(f"this onnxruntime build ({ort.__version__}, {ort.get_device()}) has no TensorRT execution "
                       "provider (install onnxruntime-gpu and TensorRT)")
    gpu = no_gpu_reason()
    if gpu:
        reasons.append(gpu)
    return "; ".join(reasons) or None


PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: list[str] | None = None) -> list[str]:
    """ONNX Runtime's preferred execution providers among ``available`` (default: this
    onnxruntime build's), best first: TensorRT, then CUDA, then CPU."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    chosen = [name for name in PREFERRED_PROVIDERS if name in available]
    return chosen or ["CPUExecutionProvider"]


def onnx_cache_dir() -> Path:
    from emolive.engine.avatar import default_cache_dir

    return default_cache_dir() / "onnx"


def _providers(backend: str) -> list:
    chosen = choose_providers()
    if backend == "tensorrt":
        options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(onnx_cache_dir() / "trt")}
        return [(TRT_PROVIDER, options)] + [name for name in chosen if name != TRT_PROVIDER]
    return chosen


@functools.lru_cache(maxsize=16)
def _onnx_denoiser(weights: str, stamp: tuple[int, int], backend: str, cache: str) -> OnnxDenoiser:
    from emolive.engine.motion.onnx_graph import export_denoiser_for_weights

    exported = export_denoiser_for_weights(weights, cache)
    return OnnxDenoiser(exported.path, backend=backend, providers=_providers(backend))


def create_denoiser(weights: str | os.PathLike, model: MotionDiT, backend: str = DEFAULT_BACKEND) -> Denoiser:
    """The denoiser of ``model`` (loaded from ``weights``) on ``backend``; exports the ONNX
    file on first use. Raises :class:`BackendUnavailable` when the backend cannot run here."""
    reason = unavailable_reason(backend)
    if reason:
        raise BackendUnavailable(f"motion backend {backend} is unavailable: {reason}")
    if backend == "torch":
        return TorchDenoiser(model)
    path = Path(weights).resolve()
    stat = path.stat()
    return _onnx_denoiser(str(path), (stat.st_mtime_ns, stat.st_size), backend, str(onnx_cache_dir()))
