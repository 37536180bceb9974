"""The shipped diffusion motion models: streaming == offline, seeds, silence, controls, loading."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from emolive.engine.audio import SAMPLE_RATE, SILENCE_FEATURE, log_mel, video_frame_features
from emolive.engine.motion import MotionModel, generate
from emolive.engine.motion.diffusion import DiffusionMotion, default_weights, load_model, save_model
from emolive.engine.motion.dit import DiTConfig, MotionDiT
from emolive.engine.motion.registry import DEFAULT_MOTION_MODEL, create_motion_model, parse_spec
from emolive.engine.motion.sampler import euler_step, sample, time_grid
from emolive.engine.motion_space import FPS, HEAD_SLICE, INDEX, NUM_CHANNELS, MotionControls, clip_frames

torch.set_num_threads(1)

ROTATIONS = ["headPitch", "headYaw", "headRoll"]


def features_of(samples: np.ndarray) -> np.ndarray:
    return video_frame_features(log_mel(samples))


def silence(seconds: float) -> np.ndarray:
    return features_of(np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32))


@pytest.fixture(scope="module")
def speech():
    """flite slt saying a sentence with closures (features, phones)."""
    from emolive.training.tts import available_voices, synthesize

    if "flite:slt" not in available_voices():
        pytest.skip("flite is not installed")
    from emolive.training.augment import to_16k

    utt = synthesize("Maybe a bumpy bus ride calms my mind, and then we move on to the pub.", "flite:slt")
    return features_of(to_16k(utt.audio, utt.rate)), utt.phones


@pytest.fixture(scope="module")
def student() -> DiffusionMotion:
    return create_motion_model("student")


def column(frames: np.ndarray, name: str) -> np.ndarray:
    return frames[:, INDEX[name]]


def test_student_is_a_motion_model(student: DiffusionMotion) -> None:
    assert DEFAULT_MOTION_MODEL in ("student", "baseline")
    assert isinstance(student, MotionModel)
    assert student.name == "student" and student.steps <= 4
    assert 0 <= student.lookahead_frames <= 2
    teacher = create_motion_model("teacher")
    assert teacher.steps >= 20
    assert create_motion_model("student:4").steps == 4
    for path in (default_weights("student"), default_weights("teacher")):
        assert path.stat().st_size <= 20 * 1024 * 1024


def test_specs_are_validated() -> None:
    assert parse_spec("teacher:8") == ("teacher", 8)
    for bad in ("baseline:2", "student:0", "student:x", "nope"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_sampler_step_is_pure_euler() -> None:
    assert time_grid(2) == [1.0, 0.5, 0.0]
    x = torch.ones(3, 2, 4)
    v = lambda x, t: torch.full_like(x, 2.0)  # noqa: E731
    np.testing.assert_allclose(euler_step(v, x, 1.0, 0.5).numpy(), 0.0)
    np.testing.assert_allclose(sample(v, x, 4).numpy(), -1.0, atol=1e-6)


def test_output_shape_range_and_streaming_in_hops_of_two_equals_generate(student, speech) -> None:
    features, _ = speech
    controls = MotionControls(head_motion=1.3, expressiveness=0.7, seed=5)
    expected = generate(student, features, controls).frames
    assert expected.shape == (len(features), NUM_CHANNELS)
    np.testing.assert_array_equal(expected, clip_frames(expected))
    model = create_motion_model("student")
    model.start(controls)
    la = model.lookahead_frames
    padded = np.concatenate([features, np.full((la, 4, 80), SILENCE_FEATURE, np.float32)])
    for hop in (2, 4):
        model.start(controls)
        chunks = [model.step(padded[b : min(b + hop, len(features)) + la]) for b in range(0, len(features), hop)]
        np.testing.assert_allclose(np.concatenate(chunks), expected, atol=1e-5)


def test_odd_chunks_stream_too(student, speech) -> None:
    features, _ = speech
    controls = MotionControls(seed=1)
    la = student.lookahead_frames
    padded = np.concatenate([features, np.full((la, 4, 80), SILENCE_FEATURE, np.float32)])
    student.start(controls)
    chunks = [student.step(padded[b : min(b + 1, len(features)) + la]) for b in range(len(features))]
    frames = np.concatenate(chunks)
    assert frames.shape == (len(features), NUM_CHANNELS)
    reference = generate(student, features, controls).frames
    jaw = column(frames, "jawOpen")
    assert np.corrcoef(jaw, column(reference, "jawOpen"))[0, 1] > 0.8


def test_same_audio_five_seeds_head_differs_lips_agree(student, speech) -> None:
    features, _ = speech
    runs = [generate(student, features, MotionControls(seed=s)).frames for s in range(5)]
    again = generate(student, features, MotionControls(seed=0)).frames
    np.testing.assert_array_equal(runs[0], again)
    for a, b in itertools.combinations(runs, 2):
        assert np.corrcoef(column(a, "jawOpen"), column(b, "jawOpen"))[0, 1] >= 0.9
        for name in ("headYaw", "headPitch"):
            diff = column(a, name) - column(b, name)
            # Not a constant offset: the difference itself moves.
            assert np.degrees(diff.std()) > 0.1, name
            assert np.degrees(np.abs(diff).max()) > 0.3, name


def test_silence_closed_mouth_blinks_and_still_head(student) -> None:
    seconds = 60.0
    for seed in (0, 1):
        frames = generate(student, silence(seconds), MotionControls(seed=seed)).frames
        assert np.mean(column(frames, "jawOpen") * (1 - column(frames, "mouthClose")) < 0.05) >= 0.95
        blink = column(frames, "eyeBlinkLeft")
        onsets = int(np.sum((blink[1:] >= 0.5) & (blink[:-1] < 0.5)))
        assert 10 <= onsets * 60.0 / seconds <= 30, onsets
        rotations = np.degrees(np.stack([column(frames, n) for n in ROTATIONS]))
        assert np.abs(rotations).max() <= 5.0


def test_head_motion_zero_keeps_head_still(student, speech) -> None:
    features, _ = speech
    frames = generate(student, features, MotionControls(head_motion=0.0)).frames
    assert not np.any(frames[:, HEAD_SLICE])


def test_save_and_load_round_trip(tmp_path) -> None:
    cfg = DiTConfig(past_frames=8, audio_hidden=16, d_model=32, depth=1, heads=2)
    torch.manual_seed(0)
    model = MotionDiT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(model, tmp_path / "m.safetensors", kind="student", steps=3)
    loaded, meta = load_model(tmp_path / "m.safetensors")
    assert meta["kind"] == "student" and meta["steps"] == "3"
    assert loaded.cfg == cfg
    motion = DiffusionMotion(loaded, steps=3)
    out = generate(motion, silence(1.0), MotionControls())
    assert out.frames.shape == (FPS, NUM_CHANNELS)
    assert math.isfinite(float(out.frames.sum()))
