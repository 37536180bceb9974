"""The motion denoiser's ONNX export and its runtimes: a valid, documented, cached graph that
computes what the torch module computes (fp32, within 1e-4 on random and real inputs, batch
sizes 1 to 8), sampled motion that matches across backends (within 1e-3), batched steps of
many streams equal to each stream stepped alone, and the CLI and server paths that use them.
No timings here: `emolive bench models` measures."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from conftest import run_emolive
from emolive.engine.audio import SILENCE_FEATURE, log_mel, video_frame_features
from emolive.engine.motion import generate
from emolive.engine.motion.backends import BackendUnavailable, DenoiserInputs, OnnxDenoiser, TorchDenoiser, unavailable_reason
from emolive.engine.motion.batching import BatchingConfig, MotionBatcher
from emolive.engine.motion.diffusion import DiffusionMotion, default_weights, load_cached, step_batch
from emolive.engine.motion.registry import create_motion_model
from emolive.engine.motion_space import NUM_CHANNELS, MotionControls

pytestmark = pytest.mark.timeout(180)
torch.set_num_threads(1)  # two threads on two shared cores only slow small models down

DENOISER_TOL = 1e-4  # fp32 velocity, ONNX Runtime vs torch
MOTION_TOL = 1e-3  # sampled motion frames, ONNX Runtime vs torch
BATCH_TOL = 1e-4  # batched vs stepped alone
TEXT = "Maybe a bumpy bus ride calms my mind, and then we move on to the pub."


@pytest.fixture(scope="module")
def student_model():
    return load_cached(str(default_weights("student").resolve()))[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from emolive.engine.motion.onnx_graph import export_denoiser_for_weights

    return export_denoiser_for_weights(default_weights("student"), tmp_path_factory.mktemp("denoiser"))


@pytest.fixture(scope="module")
def onnx_denoiser(exported) -> OnnxDenoiser:
    return OnnxDenoiser(exported.path)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """About 4 s of flite slt speech as video-frame features."""
    from emolive.training.augment import to_16k
    from emolive.training.tts import available_voices, synthesize

    if "flite:slt" not in available_voices():
        pytest.skip("flite is not installed")
    utt = synthesize(TEXT, "flite:slt")
    return video_frame_features(log_mel(to_16k(utt.audio, utt.rate)))


def _stream(model, features: np.ndarray, hop: int, controls: MotionControls) -> np.ndarray:
    """Step ``model`` over ``features`` in chunks of ``hop`` frames, as a live stream does."""
    la = model.lookahead_frames
    padded = np.concatenate([features, np.full((la, 4, 80), SILENCE_FEATURE, np.float32)])
    model.start(controls)
    return np.concatenate([model.step(padded[b : min(b + hop, len(features)) + la])
                           for b in range(0, len(features), hop)])


def _rows(inputs: DenoiserInputs, index: np.ndarray) -> DenoiserInputs:
    return DenoiserInputs(*(value[index] for value in inputs))


# ------------------------------------------------------------------------------- the graph


def test_graph_passes_checker_and_documents_its_io(exported, student_model):
    import onnx

    from emolive.engine.motion.onnx_graph import INPUT_NAMES, OUTPUT_NAME

    onnx.checker.check_model(str(exported.path), full_check=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported.path)), check_type=True, strict_mode=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    cfg = student_model.cfg
    expected = {
        "x_t": ["batch", cfg.hop_frames, NUM_CHANNELS], "t": ["batch"], "past": ["batch", cfg.past_frames, NUM_CHANNELS],
        "audio": ["batch", cfg.audio_frames, 4, 80], "controls": ["batch", cfg.n_controls],
        "audio_missing": ["batch", cfg.audio_frames], "velocity": ["batch", cfg.hop_frames, NUM_CHANNELS],
    }
    graph = {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
             for value in [*model.graph.input, *model.graph.output]}
    assert graph == expected
    assert [value.name for value in model.graph.input] == list(INPUT_NAMES) == list(DenoiserInputs._fields)
    assert all(value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for value in [*model.graph.input, *model.graph.output])

    info = json.loads(exported.sidecar.read_text())
    assert {spec["name"]: spec["shape"] for spec in info["inputs"] + info["outputs"]} == expected
    assert info["outputs"][0]["name"] == OUTPUT_NAME and all(spec["description"] for spec in info["inputs"])
    assert len(info["normalisation"]["mean"]) == len(info["normalisation"]["std"]) == NUM_CHANNELS
    assert info["sampling"]["steps"] == 2 and info["trt"]["precision"] == "fp16"
    assert info["opset"] >= 17 and info["source"]["weights_sha256"] and info["source"]["build_key"]
    assert exported.path.name.startswith("denoiser-student-") and exported.path.stem == exported.sidecar.stem


def test_export_is_cached_by_content_hash(exported, tmp_path):
    from emolive.engine.motion.onnx_graph import export_denoiser_for_weights

    again = export_denoiser_for_weights(default_weights("student"), exported.path.parent)
    assert again.cached and again.path == exported.path
    copy = tmp_path / "edited"
    shutil.copytree(exported.path.parent, copy)
    edited = copy / exported.path.name
    edited.write_bytes(edited.read_bytes()[:-1])
    rebuilt = export_denoiser_for_weights(default_weights("student"), copy)
    assert not rebuilt.cached and rebuilt.path == edited
    assert rebuilt.info["sha256"] == exported.info["sha256"]  # the export is deterministic


# ------------------------------------------------------------------------------- parity


def test_random_inputs_match_torch_at_batch_sizes_1_to_8(onnx_denoiser, student_model):
    from emolive.engine.motion.onnx_graph import random_inputs

    torch_denoiser = TorchDenoiser(student_model)
    for batch in range(1, 9):
        inputs = random_inputs(student_model.cfg, batch, seed=batch)
        got, expected = onnx_denoiser(inputs), torch_denoiser(inputs)
        assert got.shape == expected.shape == (batch, student_model.cfg.hop_frames, NUM_CHANNELS)
        assert np.abs(got - expected).max() <= DENOISER_TOL, batch


@pytest.mark.parametrize("config", [
    {},
    {"past_frames": 10, "audio_past": 6, "hop_frames": 1, "depth": 1, "heads": 2, "audio_hidden": 48},
    {"context_lips": True, "depth": 3, "heads": 8, "d_model": 64, "mlp_ratio": 3.0},
])
def test_graph_rewrite_is_the_modules_function(config):
    """GraphDiT (the traced rewrite) against MotionDiT.forward, in torch, for configurations
    besides the shipped one, with every weight random (adaLN-Zero's zeros would hide the
    modulation, the mean/std buffers are not part of the graph)."""
    from emolive.engine.motion.dit import DiTConfig, MotionDiT
    from emolive.engine.motion.onnx_graph import GraphDiT, random_inputs

    torch.manual_seed(0)
    model = MotionDiT(DiTConfig(**config)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    graph = GraphDiT(model)
    for batch in (1, 3):
        inputs = [torch.from_numpy(value) for value in random_inputs(model.cfg, batch, seed=batch)]
        with torch.no_grad():
            expected, got = model(*inputs), graph(*inputs)
        assert got.shape == expected.shape
        assert expected.abs().max().item() > 1.0 and (got - expected).abs().max().item() <= DENOISER_TOL / 10, config


def test_real_inputs_match_torch_at_batch_sizes_1_to_8(onnx_denoiser, student_model, features):
    """Inputs the sampler really feeds while streaming a TTS clip (recorded from a torch run)."""
    calls: list[DenoiserInputs] = []
    torch_denoiser = TorchDenoiser(student_model)

    class Recording:
        backend = "torch"

        def __call__(self, inputs: DenoiserInputs) -> np.ndarray:
            calls.append(inputs)
            return torch_denoiser(inputs)

    generate(DiffusionMotion(student_model, steps=2, denoiser=Recording()), features, MotionControls(seed=2))
    recorded = DenoiserInputs(*(np.concatenate(parts) for parts in zip(*calls)))
    assert len(recorded.t) == len(calls) >= 40 and set(np.round(recorded.t, 6)) == {1.0, 0.5}
    rng = np.random.default_rng(0)
    for batch in range(1, 9):
        for _ in range(3):
            inputs = _rows(recorded, rng.choice(len(recorded.t), batch, replace=False))
            assert np.abs(onnx_denoiser(inputs) - torch_denoiser(inputs)).max() <= DENOISER_TOL, batch


def test_sampled_motion_matches_torch(features):
    """The whole student (2 steps, rolling buffer, blink guard) streaming the clip: ONNX
    Runtime gives torch's frames, in hops of 2 and one frame at a time as a live session."""
    controls = MotionControls(head_motion=1.2, expressiveness=0.8, seed=7)
    torch_model = create_motion_model("student", "torch")
    onnx_model = create_motion_model("student", "onnxruntime")
    assert (torch_model.backend, onnx_model.backend) == ("torch", "onnxruntime")
    assert "CPUExecutionProvider" in onnx_model.denoiser.providers
    for hop in (2, 1):
        expected = _stream(torch_model, features, hop, controls)
        got = _stream(onnx_model, features, hop, controls)
        assert got.shape == (len(features), NUM_CHANNELS)
        assert np.abs(got - expected).max() <= MOTION_TOL, hop


# ------------------------------------------------------------------------------ batching


def _streams(features: np.ndarray, count: int):
    """``count`` different streams: their own seed, controls and part of the clip."""
    controls = [MotionControls(head_motion=0.5 + 0.3 * i, expressiveness=1.5 - 0.2 * i, seed=10 + i) for i in range(count)]
    clips = [np.roll(features, -9 * i, axis=0) for i in range(count)]
    return controls, clips


def test_step_batch_equals_stepping_each_model_alone(features):
    controls, clips = _streams(features, 5)
    hops = (1, 2, 3, 1, 2)  # odd and multi-hop chunks: rounds with different members
    la = 2

    def chunks(clip: np.ndarray, hop: int) -> list[np.ndarray]:
        padded = np.concatenate([clip, np.full((la, 4, 80), SILENCE_FEATURE, np.float32)])
        return [padded[b : b + hop + la] for b in range(0, 30, hop)]

    alone = []
    for c, clip, hop in zip(controls, clips, hops):
        model = create_motion_model("student")
        model.start(c)
        alone.append(np.concatenate([model.step(chunk) for chunk in chunks(clip, hop)]))
    models = [create_motion_model("student") for _ in controls]
    for model, c in zip(models, controls):
        model.start(c)
    streams = [chunks(clip, hop) for clip, hop in zip(clips, hops)]
    batched = [[] for _ in models]
    for k in range(max(map(len, streams))):
        active = [i for i in range(len(models)) if k < len(streams[i])]
        for i, frames in zip(active, step_batch([models[i] for i in active], [streams[i][k] for i in active])):
            batched[i].append(frames)
    for i, expected in enumerate(alone):
        got = np.concatenate(batched[i])
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= BATCH_TOL, i
    with pytest.raises(ValueError):
        step_batch([models[0], models[0]], [streams[0][0], streams[0][0]])


def test_motion_batcher_gathers_concurrent_steps(features):
    controls, clips = _streams(features, 4)
    la, steps = 2, 12

    def run(model, c, clip, step) -> np.ndarray:
        model.start(c)
        padded = np.concatenate([clip, np.full((la, 4, 80), SILENCE_FEATURE, np.float32)])
        return np.concatenate([step(model, padded[k : k + 1 + la]) for k in range(steps)])

    alone = [run(create_motion_model("student"), c, clip, lambda m, f: m.step(f)) for c, clip in zip(controls, clips)]
    # A batch runs once every member has handed in its step; the window only bounds the wait for
    # a late one. A long window keeps a loaded machine's late thread from splitting a batch.
    batcher = MotionBatcher(BatchingConfig(window_s=1.0))
    results: list[np.ndarray | None] = [None] * len(controls)

    def worker(i: int) -> None:
        results[i] = run(create_motion_model("student"), controls[i], clips[i], batcher.step)

    for _ in controls:
        batcher.join()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(controls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert batcher.stats.steps == steps * len(controls)
        assert batcher.stats.largest == len(controls) and batcher.stats.batches < batcher.stats.steps
        for got, expected in zip(results, alone):
            assert np.abs(got - expected).max() <= BATCH_TOL
        with pytest.raises(TypeError):
            batcher.submit(create_motion_model("baseline"), clips[0][:3])
        with pytest.raises(ValueError):
            batcher.submit(create_motion_model("student"), clips[0][:0])  # shorter than the lookahead
    finally:
        batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(create_motion_model("student"), clips[0][:3])


def test_sessions_sharing_a_batcher_stream_what_they_stream_alone(features):
    from emolive.engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar
    from emolive.engine.session import Session, SessionOptions

    _, rig = prepare_avatar(DEFAULT_PORTRAIT, RenderOptions(size=128))
    samples = (0.3 * np.sin(np.arange(2 * 16000) * 0.05)).astype(np.float32)
    frames_each = 20

    async def stream(batcher: MotionBatcher | None) -> list[np.ndarray]:
        sessions = [Session(rig, create_motion_model("student"), SessionOptions(
            controls=MotionControls(seed=i), render_video=False, realtime=False), batcher=batcher) for i in range(3)]
        assert all(s.model.backend == "onnxruntime" for s in sessions)
        for session in sessions:
            session.push_audio(samples, 16000)

        async def take(session: Session) -> np.ndarray:
            rows = []
            async for frame in session.frames():
                rows.append(frame.motion)
                if len(rows) == frames_each:
                    break
            return np.stack(rows)

        try:
            return await asyncio.wait_for(asyncio.gather(*(take(s) for s in sessions)), 60)
        finally:
            for session in sessions:
                await session.close()

    alone = asyncio.run(stream(None))
    batcher = MotionBatcher()
    try:
        batched = asyncio.run(stream(batcher))
    finally:
        batcher.close()
    assert batcher.stats.largest >= 2
    for got, expected in zip(batched, alone):
        assert np.abs(got - expected).max() <= BATCH_TOL


# ------------------------------------------------------------------------------ CLI, server


def test_cli_export_writes_the_denoiser_that_onnxruntime_loads(tmp_path):
    import onnxruntime as ort

    proc = run_emolive("export", "onnx", "-o", tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("*.onnx")
    assert path.name.startswith("denoiser-")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert json.loads(path.with_suffix(".json").read_text())["inputs"][0]["name"] == session.get_inputs()[0].name
    assert f"denoiser: {path}" in proc.stderr


def test_tensorrt_backend_is_refused_clearly_where_unavailable(tmp_path):
    reason = unavailable_reason("tensorrt")
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are present")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        create_motion_model("student", "tensorrt")
    create_motion_model("baseline", "tensorrt")  # no denoiser: nothing to refuse
    with pytest.raises(ValueError):
        create_motion_model("student", "tpu")
    proc = run_emolive("motion", "--motion", "student", "--motion-backend", "tensorrt", "-o", tmp_path / "m.csv")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("emolive: error: --motion-backend tensorrt is unavailable:")


def test_server_sessions_run_the_student_on_onnxruntime_in_one_batcher(tmp_path):
    from emolive.server.config import Settings
    from emolive.bench.background_server import BackgroundServer

    settings = Settings(data_dir=tmp_path, motion="student", motion_backend="onnxruntime", motion_batching=True,
                        max_sessions=2, idle_timeout_s=60)
    with BackgroundServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        created = [http.post("/v1/sessions", json={"video": False, "seed": i}).json() for i in range(2)]
        registry = server.app.state.registry
        time.sleep(1.0)  # both clocks tick
        described = [http.get(f"/v1/sessions/{c['session_id']}", headers={"Authorization": f"Bearer {c['token']}"}).json()
                     for c in created]
        assert all(d["motion"] == "student" and d["motion_backend"] == "onnxruntime" for d in described), described
        assert all(d["frames_out"] > 0 for d in described), described
        assert registry.batcher is not None and registry.batcher.stats.largest == 2
