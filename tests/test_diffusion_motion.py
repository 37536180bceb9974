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


def test_silence_shows_no_expression_but_speech_still_does(student: DiffusionMotion, speech) -> None:
    """The shipped student's rest offset: 8 s of digital silence on a seed it was not
    calibrated on holds no smile, squint or brow (the portrait's own expression shows), while
    speech still moves the lips and the expression channels."""
    from emolive.engine.motion.diffusion import EXPRESSION_CHANNELS

    assert student.rest_offset[INDEX["mouthSmileLeft"]] > 0.01
    quiet = generate(student, silence(8.0), MotionControls(seed=7)).frames
    assert np.abs(quiet[:, EXPRESSION_CHANNELS]).max() <= 0.01
    assert np.abs(quiet[:, HEAD_SLICE]).max() > 0.005, "the head still idles"
    features, _ = speech
    talking = generate(student, features, MotionControls(seed=7)).frames
    assert column(talking, "jawOpen").max() > 0.3
    assert talking[:, EXPRESSION_CHANNELS].max(0).sum() > 0.5


def test_rest_offset_round_trips_and_touches_expressions_only(tmp_path) -> None:
    cfg = DiTConfig(past_frames=8, audio_hidden=16, d_model=32, depth=1, heads=2)
    model = _random_model(cfg)
    offset = np.zeros(NUM_CHANNELS, np.float32)
    offset[INDEX["mouthSmileLeft"]] = 0.25
    save_model(model, tmp_path / "m.safetensors", kind="student", steps=2, rest_offset=offset)
    loaded = DiffusionMotion.from_file(tmp_path / "m.safetensors")
    assert np.array_equal(loaded.rest_offset, offset)
    plain = DiffusionMotion(model, steps=2)
    with_offset, without = (generate(m, silence(1.0), MotionControls(seed=3)).frames for m in (loaded, plain))
    smile = INDEX["mouthSmileLeft"]
    assert np.allclose(with_offset[:, smile], np.maximum(without[:, smile] - 0.25, 0.0), atol=1e-6)
    others = np.delete(np.arange(NUM_CHANNELS), smile)
    assert np.allclose(with_offset[:, others], without[:, others], atol=1e-6)
    head = np.zeros(NUM_CHANNELS, np.float32)
    head[INDEX["headYaw"]] = 0.1
    with pytest.raises(ValueError, match="expression channels only"):
        DiffusionMotion(model, steps=2, rest_offset=head)


def _random_model(cfg: DiTConfig) -> MotionDiT:
    torch.manual_seed(0)
    model = MotionDiT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.eval()
    return model


@pytest.mark.parametrize("hop, lookahead", [(2, 2), (1, 1)])
def test_checkpoints_of_either_design_load_and_stream_one_frame_a_tick(tmp_path, speech, hop: int, lookahead: int) -> None:
    """v6 (2-frame hops, 2 frames of lookahead) and v7 (1 and 1, normalised features) both load
    from their stored config; stepping one frame a tick, as a live session does, streams."""
    features, _ = speech
    cfg = DiTConfig(past_frames=8, audio_hidden=16, d_model=32, depth=1, heads=2, hop_frames=hop,
                    lookahead=lookahead, feature_norm=hop == 1)
    model = _random_model(cfg)
    if cfg.feature_norm:
        model.audio_prior.copy_(torch.from_numpy(features.mean(axis=(0, 1))))
    save_model(model, tmp_path / "m.safetensors", kind="student", steps=2)
    motion = DiffusionMotion.from_file(tmp_path / "m.safetensors", backend="torch")
    assert motion.lookahead_frames == lookahead and motion.cfg == cfg
    controls = MotionControls(seed=3)
    expected = generate(motion, features, controls).frames
    padded = np.concatenate([features, np.full((lookahead, 4, 80), SILENCE_FEATURE, np.float32)])
    motion.start(controls)
    ticks = np.concatenate([motion.step(padded[i : i + 1 + lookahead]) for i in range(len(features))])
    if hop == 1:  # a live session's frames are exactly the offline ones
        np.testing.assert_allclose(ticks, expected, atol=1e-5)
    else:
        assert ticks.shape == expected.shape and np.isfinite(ticks).all()


def test_normalised_training_windows_are_what_the_stream_sees(speech) -> None:
    """The audio windows a model is trained on (training.dataset, normalised offline) are the
    ones it is given when a stream is stepped frame by frame, feature normalisation included."""
    from emolive.training.corpus import Corpus
    from emolive.training.dataset import WindowSampler

    features, _ = speech
    features = features.astype(np.float16)  # as the corpus stores them
    n = len(features)
    cfg = DiTConfig(past_frames=8, audio_hidden=16, d_model=32, depth=1, heads=2, hop_frames=1, lookahead=1,
                    feature_norm=True)
    corpus = Corpus(features, np.zeros((n, NUM_CHANNELS), np.float32), np.array([n]), np.zeros((1, 3), np.float32),
                    np.array(["v"]), np.array(["t"]), np.array(["g"]), [[]])
    sampler = WindowSampler(corpus, cfg, np.zeros(NUM_CHANNELS), np.ones(NUM_CHANNELS), seed=0)
    model = _random_model(cfg)
    model.audio_prior.copy_(torch.from_numpy(sampler.audio_prior))
    seen = []

    class Recorder:
        backend = "torch"

        def __call__(self, inputs):
            seen.append(inputs.audio[0].copy())
            return np.zeros_like(inputs.x_t)

    motion = DiffusionMotion(model, steps=1, denoiser=Recorder())
    motion.start(MotionControls())
    padded = np.concatenate([features.astype(np.float32), np.full((1, 4, 80), SILENCE_FEATURE, np.float32)])
    for i in range(n):
        motion.step(padded[i : i + 2])
    starts = sampler.starts[:n]
    assert np.abs(sampler.norm[starts]).max() > 0.05  # the running mean moved away from the prior
    for i, t in enumerate(starts):  # sampler.sample's window for a hop starting at frame i
        window = sampler.features[t + sampler.audio_offsets].astype(np.float32) + sampler.norm[t]
        np.testing.assert_allclose(seen[i], window, atol=2e-3)  # the corpus keeps float16 features
