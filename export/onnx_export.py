"""Export the renderer (:class:`export.renderer.TorchRenderer`) of one avatar to ONNX.

The file is a build output: ``renderer-<portrait sha256[:12]>-<build key[:12]>.onnx`` beside a
JSON sidecar of the same stem. The build key hashes the rig's arrays (so the portrait, the
``--size`` and the rig builder's choices), the export code and the CPU renderer code it
mirrors, the opset and the torch version; an existing file whose sidecar records that key and the file's own sha256 is up
to date and is not rebuilt. Edit nothing by hand: delete the files (or pass ``--force``).

Graph contract (also written to the sidecar):

* input ``motion``: float32 ``(batch, 35)``, one motion frame per row in the channel order of
  :data:`engine.motion_space.CHANNELS`; values are clipped to their limits inside the graph;
* output ``frames``: uint8 ``(batch, H, W, 3)``, RGB, the avatar's frame size;
* ``batch`` is dynamic (any batch size >= 1); everything else is fixed per avatar.

The exporter is torch's TorchScript-based one (``dynamo=False``), opset 17: the dynamo
exporter also produces a valid graph but takes about 90 s at 512² (against about 7 s).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np

from engine.motion_space import CHANNELS, NUM_CHANNELS
from engine.rig import Rig
from export.files import check_graph, sources_hash, up_to_date, write_build
from export.registry import DEFAULT_OPSET, ExportRequest, ExportResult

EXPORTER = "torch.onnx.export, TorchScript-based (dynamo=False)"
INPUT_NAME = "motion"
OUTPUT_NAME = "frames"
BATCH_AXIS = "batch"
MIN_OPSET = 17
# The module mirrors the CPU renderer's maths and constants: a change to either side is a
# new build.
_SOURCES = ("export/renderer.py", "export/onnx_export.py", "engine/render.py", "engine/flow.py", "engine/mouth.py")


def rig_hash(rig: Rig) -> str:
    """sha256 of everything in the rig that the renderer reads."""
    digest = hashlib.sha256()

    def add(name: str, value) -> None:
        digest.update(name.encode())
        if value is None:
            digest.update(b"<none>")
            return
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())

    add("image", rig.image)
    add("vertices", rig.vertices)
    add("head_weight", rig.head_weight)
    add("head_center", rig.head_center)
    add("bases", rig.bases)
    add("frame", np.concatenate([rig.frame.origin, rig.frame.u, rig.frame.v, [rig.frame.iod]]).astype(np.float64))
    add("inverse_iterations", rig.inverse_iterations)
    for i, grid in enumerate([rig.grid, *rig.detail_grids]):
        matrix = grid.matrix.tocsr()
        add(f"grid{i}", np.array([*grid.roi, grid.step, *grid.shape]))
        add(f"grid{i}.indptr", matrix.indptr)
        add(f"grid{i}.indices", matrix.indices)
        add(f"grid{i}.data", matrix.data)
    mouth = rig.mouth
    for name in ("upper_inner", "lower_inner", "cavity_image", "cavity_upper", "cavity_lower", "cavity_split"):
        add(f"mouth.{name}", getattr(mouth, name))
    return digest.hexdigest()


def code_hash(opset: int) -> str:
    """sha256 of the export code and the CPU renderer code it mirrors, the renderer maths
    version, the opset and torch's version."""
    import torch

    from export.renderer import RENDERER_VERSION

    return sources_hash(f"v{RENDERER_VERSION}:opset{opset}:torch{torch.__version__}", _SOURCES)


def renderer_io(rig: Rig) -> dict:
    """The graph's inputs and outputs as the sidecar documents them."""
    height, width = rig.image.shape[:2]
    return {
        "inputs": [{
            "name": INPUT_NAME, "dtype": "float32", "shape": [BATCH_AXIS, NUM_CHANNELS],
            "channels": list(CHANNELS),
            "description": "motion frames, one per row: head pose (radians; translation in face widths; "
                           "log scale) then ARKit blendshapes in [0, 1]; clipped to their limits in the graph",
        }],
        "outputs": [{
            "name": OUTPUT_NAME, "dtype": "uint8", "shape": [BATCH_AXIS, int(height), int(width), 3],
            "description": "RGB frames of the avatar, one per motion row",
        }],
    }


def export_onnx(rig: Rig, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace the rig's TorchRenderer into ``path`` (not checked; see :func:`check_onnx`)."""
    import torch

    from export.renderer import TorchRenderer

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (GridSample needs 16), got {opset}")
    module = TorchRenderer(rig).eval()
    example = torch.zeros(2, NUM_CHANNELS, dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
            do_constant_folding=True,
        )


def check_onnx(path: Path, rig: Rig) -> None:
    """onnx.checker (full check) and strict shape inference; the inferred input and output
    types and shapes must be the documented ones. Raises ValueError otherwise."""
    check_graph(path, renderer_io(rig))


def renderer_files(out_dir: Path, content_hash: str, build_key: str) -> tuple[Path, Path]:
    stem = f"renderer-{content_hash[:12]}-{build_key[:12]}"
    return out_dir / f"{stem}.onnx", out_dir / f"{stem}.json"


def export_renderer_for_rig(
    rig: Rig, out_dir: str | os.PathLike, content_hash: str, *, portrait: str = "", size: int | None = None,
    opset: int = DEFAULT_OPSET, force: bool = False,
) -> ExportResult:
    """Export (or find up to date) the renderer of ``rig`` in ``out_dir``.

    ``content_hash`` names the avatar (the portrait file's sha256)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rig_key = rig_hash(rig)
    code_key = code_hash(opset)
    build_key = hashlib.sha256(f"{rig_key}:{code_key}".encode()).hexdigest()
    path, sidecar = renderer_files(out_dir, content_hash, build_key)
    if not force:
        info = up_to_date(path, sidecar, build_key)
        if info is not None:
            return ExportResult("renderer", path, sidecar, cached=True, info=info)

    import onnx
    import torch

    from export.renderer import mouth_window

    start = time.perf_counter()

    def build(tmp: Path) -> None:
        export_onnx(rig, tmp, opset)
        check_onnx(tmp, rig)

    info = write_build(path, sidecar, build, {
        "model": "renderer",
        "opset": opset,
        "exporter": EXPORTER,
        **renderer_io(rig),
        "source": {
            "portrait": portrait,
            "portrait_sha256": content_hash,
            "size": size if size is not None else int(max(rig.image.shape[:2])),
            "rig_sha256": rig_key,
            "code_sha256": code_key,
            "build_key": build_key,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
        "rig": {
            "roi": list(rig.grid.roi),
            "detail_rois": [list(grid.roi) for grid in rig.detail_grids],
            "mouth_window": list(mouth_window(rig)),
            "has_cavity": rig.mouth.cavity_image is not None,
        },
        "trt": {"precision": "fp32", "why": "sampling coordinates are pixel positions: fp16 has 0.25-0.5 px steps at 512"},
    })
    return ExportResult("renderer", path, sidecar, cached=False, seconds=time.perf_counter() - start, info=info)


def export_renderer(request: ExportRequest) -> list[ExportResult]:
    """The registry's entry point: register the portrait, build its rig, export."""
    from engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar

    portrait = request.portrait or DEFAULT_PORTRAIT
    avatar, rig = prepare_avatar(portrait, RenderOptions(size=request.size))
    return [export_renderer_for_rig(rig, request.out_dir, avatar.content_hash, portrait=str(portrait),
                                    size=request.size, opset=request.opset, force=request.force)]
