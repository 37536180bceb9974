"""ONNX graphs built from the code, on disk: content hashes, the up-to-date test, atomic
writes, graph checks.

Every exported model is an ``.onnx`` file beside a JSON sidecar of the same stem. The sidecar
records a *build key* (a hash of everything the file is made from) and the file's own sha256:
a file is up to date when its sidecar has the expected build key and the file still hashes to
what the sidecar says (so a hand-edited or truncated file is rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


DEFAULT_OPSET = 17


@dataclass
class GraphFile:
    """One written (or found up to date) model file."""

    name: str
    path: Path  # the .onnx file
    sidecar: Path  # its JSON description
    cached: bool  # True: an up-to-date file was already there
    seconds: float = 0.0
    info: dict = field(default_factory=dict)  # what the sidecar says (inputs, outputs, hashes, ...)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sources_hash(prefix: str, sources: tuple[str, ...]) -> str:
    """sha256 of ``prefix`` and the named source files of the engine (paths from its package)."""
    digest = hashlib.sha256(prefix.encode())
    root = Path(__file__).resolve().parents[1]
    for name in sources:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def up_to_date(path: Path, sidecar: Path, build_key: str) -> dict | None:
    """The sidecar's contents if ``path`` is the build ``build_key`` describes, else None."""
    try:
        info = json.loads(sidecar.read_text())
        if info.get("source", {}).get("build_key") == build_key and info.get("sha256") == sha256_file(path):
            return info
    except (OSError, ValueError, AttributeError):
        pass
    return None


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then move it into place: a reader
    never sees half a file, and a failed build leaves nothing behind."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; build outputs are ordinary files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


GENERATED_BY = "emolive export onnx (a build output: do not edit; delete it or pass --force to rebuild)"


def write_build(path: Path, sidecar: Path, build: Callable[[Path], None], description: dict) -> dict:
    """Build ``path`` with ``build(tmp)`` (:func:`write_atomically`), then write its sidecar:
    ``description`` (which holds ``source.build_key``) with the file's name, sha256 and size.
    Returns the sidecar's contents."""
    write_atomically(path, build)
    info = {**description, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "generated_by": GENERATED_BY}
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_graph(path: Path, io: dict) -> None:
    """onnx.checker (full check) and strict shape inference; the graph's inputs and outputs
    must be exactly ``io["inputs"] + io["outputs"]`` (name, dtype, shape with named dynamic
    axes). Raises ValueError otherwise."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    expected = {spec["name"]: spec for spec in io["inputs"] + io["outputs"]}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = expected.pop(value.name, None)
        if spec is None:
            raise ValueError(f"{path.name}: unexpected graph input/output {value.name!r}")
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        if np.dtype(dtype).name != spec["dtype"] or dims != spec["shape"]:
            raise ValueError(f"{path.name}: {value.name} is {np.dtype(dtype).name}{dims}, expected {spec['dtype']}{spec['shape']}")
    if expected:
        raise ValueError(f"{path.name}: missing graph inputs/outputs {sorted(expected)}")
