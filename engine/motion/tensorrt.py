"""TensorRT engines from the exported ONNX files (needs the ``tensorrt`` package and a CUDA GPU).

Engines are specific to the GPU and the TensorRT version, so an engine's name carries both
and its JSON sidecar records the ONNX file's sha256: an engine is rebuilt only when one of
them changes. Every engine gets one optimisation profile over the dynamic batch axis
(1 .. ``max_batch``, tuned for ``opt_batch``).

Precision: ``fp16`` lets TensorRT run layers in half precision; ``fp32`` does not; ``auto``
takes what each model's sidecar asks for (``trt.precision``), fp16 when it says nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("auto", "fp16", "fp32")


class TensorRTUnavailable(RuntimeError):
    """TensorRT engines cannot be built on this machine; the message says why."""


def cuda_devices() -> list[str] | None:
    """Names of the CUDA GPUs the driver sees; None when there is no CUDA driver at all."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    try:
        if lib.cuInit(0) != 0:
            return []
        count = ctypes.c_int()
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return []
        names = []
        for index in range(count.value):
            device = ctypes.c_int()
            buffer = ctypes.create_string_buffer(256)
            if lib.cuDeviceGet(ctypes.byref(device), index) == 0 and lib.cuDeviceGetName(buffer, 256, device) == 0:
                names.append(buffer.value.decode(errors="replace"))
            else:
                names.append(f"cuda:{index}")
        return names
    except AttributeError:  # not a CUDA driver library after all
        return None


def unavailable_reason() -> str | None:
    """Why engines cannot be built here (one line), or None when they can."""
    reasons = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        reasons.append("the tensorrt Python package is not installed (pip install tensorrt)")
    except Exception as error:  # a broken install (missing libnvinfer, ...) is just as unusable
        reasons.append(f"the tensorrt Python package does not load ({type(error).__name__}: {error})")
    gpu = no_gpu_reason()
    if gpu:
        reasons.append(gpu)
    return "; ".join(reasons) or None


def no_gpu_reason() -> str | None:
    """Why no CUDA GPU can be used here (one line), or None when one can."""
    devices = cuda_devices()
    if devices is None:
        return "there is no CUDA driver (libcuda.so.1 not found)"
    if not devices:
        return "the CUDA driver sees no GPU"
    return None


@dataclass
class EngineResult:
    name: str
    path: Path
    sidecar: Path
    precision: str
    cached: bool
    seconds: float = 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def _model_precision(onnx_sidecar: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        return json.loads(onnx_sidecar.read_text()).get("trt", {}).get("precision", "fp16")
    except (OSError, ValueError, AttributeError):
        return "fp16"


def build_engine(onnx_path: Path, engine_path: Path, precision: str, min_batch: int = 1, opt_batch: int = 4,
                 max_batch: int = 8, workspace_bytes: int = 2 << 30) -> None:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and write a serialised engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = list(tensor.shape)
        shapes = [[batch if d == -1 else d for d in dims] for batch in (min_batch, opt_batch, max_batch)]
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    handle, tmp = tempfile.mkstemp(prefix=f".{engine_path.name}.", dir=engine_path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(serialized)  # IHostMemory exposes the buffer protocol
        os.chmod(tmp, 0o644)
        os.replace(tmp, engine_path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_engines(models: list, precision: str = "auto", max_batch: int = 8, opt_batch: int = 4,
                  force: bool = False, log=print) -> list[EngineResult]:
    """One engine per exported model (:class:`emolive.engine.motion.graph_files.GraphFile`), next to its ONNX file."""
    reason = unavailable_reason()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    from emolive.engine.motion.graph_files import sha256_file

    gpu = (cuda_devices() or ["gpu"])[0]
    results = []
    for model in models:
        chosen = _model_precision(model.sidecar, precision)
        stem = f"{model.path.stem}.{chosen}.trt{trt.__version__}.{_slug(gpu)}"
        engine, sidecar = model.path.with_name(stem + ".plan"), model.path.with_name(stem + ".plan.json")
        key = {"onnx_sha256": sha256_file(model.path), "tensorrt": trt.__version__, "gpu": gpu,
               "precision": chosen, "batch": [1, opt_batch, max_batch]}
        try:
            cached = not force and engine.is_file() and json.loads(sidecar.read_text()).get("key") == key
        except (OSError, ValueError, AttributeError):
            cached = False
        if cached:
            results.append(EngineResult(model.name, engine, sidecar, chosen, cached=True))
            continue
        log(f"{model.name}: building a {chosen} TensorRT engine for {gpu} (minutes)")
        start = time.perf_counter()
        build_engine(model.path, engine, chosen, 1, opt_batch, max_batch)
        sidecar.write_text(json.dumps({"model": model.name, "onnx": model.path.name, "key": key,
                                       "generated_by": "emolive export trt (a build output: do not edit)"}, indent=2) + "\n")
        results.append(EngineResult(model.name, engine, sidecar, chosen, cached=False, seconds=time.perf_counter() - start))
    return results
