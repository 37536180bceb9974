"""The renderer's ONNX export: a valid, documented, cached graph that renders what the CPU
renderer renders (within 2/255 mean absolute difference over a motion sweep), at any batch
size, never touching the background.

Exports run at 256 px to keep this module fast; `emolive export onnx --verify` runs the same
sweep at any size (512 by default)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import PORTRAIT, run_emolive
from engine.motion_space import NUM_CHANNELS

SIZE = 256
MAX_MAD = 2.0  # levels of 255: the bound, whole frame and mouth box alike


@pytest.fixture(scope="module")
def avatar_rig():
    from engine.offline import RenderOptions, prepare_avatar

    return prepare_avatar(PORTRAIT, RenderOptions(size=SIZE))


@pytest.fixture(scope="module")
def rig(avatar_rig):
    return avatar_rig[1]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def exported(avatar_rig, export_dir):
    from export.onnx_export import export_renderer_for_rig

    avatar, rig = avatar_rig
    return export_renderer_for_rig(rig, export_dir, avatar.content_hash, portrait=str(PORTRAIT), size=SIZE)


@pytest.fixture(scope="module")
def onnx_renderer(exported):
    from export.runtime import OnnxRenderer

    return OnnxRenderer(exported.path, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cpu_renderer(rig):
    from engine.render import Renderer

    return Renderer(rig)


@pytest.fixture(scope="module")
def sweep():
    from export.parity import SWEEP

    return list(SWEEP), np.stack(list(SWEEP.values()))


@pytest.fixture(scope="module")
def sweep_frames(onnx_renderer, sweep):
    return onnx_renderer.render_batch(sweep[1])


def _report(record_property, name, value):
    record_property(name, value)
    print(f"\n[measure] {name} = {value}")


# ------------------------------------------------------------------------------- the graph


def test_graph_passes_checker_and_documents_its_io(exported, rig):
    import onnx

    onnx.checker.check_model(str(exported.path), full_check=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported.path)), check_type=True, strict_mode=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17

    def signature(value):
        tensor = value.type.tensor_type
        return tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]

    (motion,), (frames,) = model.graph.input, model.graph.output
    assert (motion.name, signature(motion)) == ("motion", (onnx.TensorProto.FLOAT, ["batch", NUM_CHANNELS]))
    assert (frames.name, signature(frames)) == ("frames", (onnx.TensorProto.UINT8, ["batch", SIZE, SIZE, 3]))

    info = json.loads(exported.sidecar.read_text())
    assert info["inputs"][0]["shape"] == ["batch", NUM_CHANNELS] and len(info["inputs"][0]["channels"]) == NUM_CHANNELS
    assert info["outputs"][0] == {**info["outputs"][0], "name": "frames", "dtype": "uint8", "shape": ["batch", SIZE, SIZE, 3]}
    assert info["opset"] >= 17 and info["sha256"] and info["source"]["rig_sha256"] and info["source"]["code_sha256"]
    assert exported.path.name.startswith("renderer-") and exported.path.stem == exported.sidecar.stem


def test_export_is_cached_by_content_hash(exported, avatar_rig, export_dir, tmp_path):
    from export.onnx_export import export_renderer_for_rig, rig_hash

    avatar, rig = avatar_rig
    again = export_renderer_for_rig(rig, export_dir, avatar.content_hash, size=SIZE)
    assert again.cached and again.path == exported.path

    # A hand-edited (or truncated) file is not trusted: it is rebuilt.
    copy = tmp_path / "edited"
    shutil.copytree(export_dir, copy)
    edited = copy / exported.path.name
    edited.write_bytes(edited.read_bytes()[:-1])
    rebuilt = export_renderer_for_rig(rig, copy, avatar.content_hash, size=SIZE)
    assert not rebuilt.cached and rebuilt.path == edited
    assert json.loads(rebuilt.sidecar.read_text())["sha256"] == json.loads(exported.sidecar.read_text())["sha256"]

    # Another rig is another file.
    moved = replace(rig, vertices=rig.vertices + np.float32(0.25))
    assert rig_hash(moved) != rig_hash(rig)


# ------------------------------------------------------------------------------- parity


def test_parity_with_cpu_renderer_over_the_sweep(cpu_renderer, sweep, sweep_frames, record_property):
    from export.parity import compare

    names, motion = sweep
    rows = compare(cpu_renderer, sweep_frames, motion, names)
    for row in rows:
        print(f"\n[measure] {row}")
    worst = max(rows, key=lambda row: row.mad)
    worst_mouth = max(rows, key=lambda row: row.mouth_mad)
    _report(record_property, "onnx_vs_cpu_worst_frame_mad_255", f"{worst.mad:.4f} ({worst.name})")
    _report(record_property, "onnx_vs_cpu_worst_mouth_mad_255", f"{worst_mouth.mouth_mad:.4f} ({worst_mouth.name})")
    bad = [str(row) for row in rows if row.mad > MAX_MAD or row.mouth_mad > MAX_MAD]
    assert not bad, "renderer ONNX differs from the CPU renderer:\n" + "\n".join(bad)


def test_closed_lip_portraits_synthesise_teeth_in_parity(rig, tmp_path, sweep):
    """Portraits without their own cavity get synthesised teeth: a different code path."""
    from engine.render import Renderer
    from export.onnx_export import export_renderer_for_rig
    from export.parity import compare
    from export.runtime import OnnxRenderer

    closed = replace(rig, mouth=replace(rig.mouth, cavity_image=None, cavity_upper=None, cavity_lower=None,
                                        cavity_split=None))
    result = export_renderer_for_rig(closed, tmp_path, "closed-lips")
    names, motion = sweep
    rows = compare(Renderer(closed), OnnxRenderer(result.path).render_batch(motion), motion, names)
    bad = [str(row) for row in rows if row.mad > MAX_MAD or row.mouth_mad > MAX_MAD]
    assert not bad, "\n".join(bad)


def test_batch_sizes_give_the_same_frames(onnx_renderer, sweep, sweep_frames):
    """A frame does not depend on its batch-mates: batches of 1 and 4 give the frames the
    whole sweep in one batch gives."""
    names, motion = sweep
    singles = np.stack([onnx_renderer.render(row) for row in motion])
    fours = np.concatenate([onnx_renderer.render_batch(motion[i:i + 4]) for i in range(0, len(motion), 4)])
    assert singles.dtype == np.uint8 and singles.shape == (len(motion), SIZE, SIZE, 3)
    np.testing.assert_array_equal(singles, sweep_frames)
    np.testing.assert_array_equal(fours, sweep_frames)


def test_pixels_outside_the_rig_roi_are_the_portrait(rig, sweep_frames):
    x0, y0, x1, y1 = rig.grid.roi
    outside = np.ones(rig.image.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any()
    for frame in sweep_frames:
        np.testing.assert_array_equal(frame[outside], rig.image[outside])


def test_torch_module_matches_onnx_runtime(rig, sweep, sweep_frames, record_property):
    """The exported graph computes what the module computes. Both emulate OpenCV's 1/32 px
    coordinate rounding, so a float difference of 1e-6 can move a sample by 1/32 px at a
    rounding boundary: a handful of pixels may differ by a level or two, no more."""
    import torch

    from export.renderer import TorchRenderer

    with torch.no_grad():
        expected = TorchRenderer(rig).eval()(torch.from_numpy(sweep[1])).numpy()
    diff = np.abs(expected.astype(np.int16) - sweep_frames.astype(np.int16))
    _report(record_property, "torch_vs_onnx", f"mean {diff.mean() / 255:.2e}, max {diff.max()} levels, "
                                              f"{(diff > 0).mean():.2e} of values differ")
    assert diff.mean() <= 1 / 255
    assert (diff > 1).mean() < 1e-4
    assert diff.max() <= 8


def test_polygon_mask_matches_opencv():
    """The compositor's masks are rasterised as cv2.fillPoly does on float images."""
    import torch

    from engine.mouth import _polygon_mask
    from export.renderer import PolygonMask

    rng = np.random.default_rng(7)
    raster = PolygonMask(0.0)
    for trial in range(60):
        count = int(rng.integers(3, 23))
        if trial % 2:  # star-shaped, like lips
            angles = np.sort(rng.uniform(0, 2 * np.pi, count))
            radius = rng.uniform(3, 18, count)
            polygon = np.stack([25 + radius * np.cos(angles), 20 + 0.6 * radius * np.sin(angles)], 1)
        else:  # anything, self-intersecting included
            polygon = rng.uniform(2, 38, (count, 2))
        polygon = polygon.astype(np.float32)
        expected = _polygon_mask((40, 50), polygon, 0)
        got = raster(torch.from_numpy(polygon[None] + np.float32([5, 9])), torch.arange(5, 55.0)[None],
                     torch.arange(9, 49.0)[None])[0, 0].numpy()
        np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------- runtime, CLI


def test_onnx_renderer_interface(onnx_renderer, cpu_renderer):
    from engine.motion_space import rest_frame
    from export.runtime import choose_providers

    frame = onnx_renderer.render(rest_frame())
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, cpu_renderer.render(rest_frame()))
    with pytest.raises(ValueError):
        onnx_renderer.render_batch(np.zeros((2, NUM_CHANNELS - 1), np.float32))
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cli_reuses_the_export_and_refuses_trt_clearly(exported, export_dir):
    proc = run_emolive("export", "onnx", "-o", export_dir, "--size", SIZE, "--what", "renderer", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr and exported.path.name in proc.stderr

    from export.trt import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt and a CUDA GPU are present: `export trt` would build engines")
    proc = run_emolive("export", "trt", "-o", export_dir, "--size", SIZE, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emolive: error: cannot build TensorRT engines:"), proc.stderr


def test_unavailable_exporters_are_reported_not_crashed():
    from export.registry import ExporterUnavailable, get_exporter, register

    register("missing-for-test", "export.no_such_module:export")
    try:
        with pytest.raises(ExporterUnavailable):
            get_exporter("missing-for-test")
    finally:
        from export.registry import EXPORTERS

        EXPORTERS.pop("missing-for-test", None)


@pytest.mark.parametrize("path", [("export",), ("export", "onnx"), ("export", "trt")], ids=" ".join)
def test_every_export_option_is_explained(path):
    import argparse

    from cli.main import build_parser

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.description for choice in action.choices.values())
            continue
        assert action.help and all(option in text for option in action.option_strings), action.option_strings
