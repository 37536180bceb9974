"""The baseline motion model: mouth from loudness, blinks, sway, streaming == offline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emolive.engine.audio import SAMPLE_RATE, SILENCE_FEATURE, log_mel, video_frame_features
from emolive.engine.motion import MotionModel, generate
from emolive.engine.motion.baseline import BaselineMotion
from emolive.engine.motion_space import FPS, HEAD_SLICE, INDEX, NUM_CHANNELS, MotionControls, clip_frames

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
ROTATIONS = ["headPitch", "headYaw", "headRoll"]
BROWS = ["browInnerUp", "browOuterUpLeft", "browOuterUpRight"]


def features_of(samples: np.ndarray) -> np.ndarray:
    """(T, 4, 80) video-frame features of 16 kHz samples."""
    return video_frame_features(log_mel(samples))


def silence(seconds: float) -> np.ndarray:
    """Features of digital silence."""
    return features_of(np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32))


def speech_like(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A gliding harmonic voice in 4 Hz syllables of random loudness, 1.5 s phrases and 0.5 s
    pauses; returns the features and the mean amplitude envelope of each video frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 2.0 * np.pi * np.cumsum(130.0 + 25.0 * np.sin(2.0 * np.pi * 0.4 * t)) / SAMPLE_RATE
    voice = sum(np.sin(k * pitch) / k for k in range(1, 26))  # harmonics up to ~4 kHz
    syllables = 0.5 - 0.5 * np.cos(2.0 * np.pi * 4.0 * t)
    loudness = rng.uniform(0.2, 1.0, len(t) // (SAMPLE_RATE // 4) + 1)[(t * 4).astype(int)]
    phrases = (t % 2.0) < 1.5
    envelope = syllables * loudness * phrases
    frames = len(t) // SAMPLES_PER_FRAME
    per_frame = envelope[: frames * SAMPLES_PER_FRAME].reshape(frames, -1).mean(axis=1)
    return features_of((0.3 * envelope * voice).astype(np.float32)), per_frame


def run(features: np.ndarray, **controls: float) -> np.ndarray:
    """Offline motion frames of the baseline."""
    return generate(BaselineMotion(), features, MotionControls(**controls)).frames


def column(frames: np.ndarray, name: str) -> np.ndarray:
    return frames[:, INDEX[name]]


def blink_onsets(frames: np.ndarray) -> np.ndarray:
    """Frames where the eyes start to close."""
    blink = column(frames, "eyeBlinkLeft")
    return np.flatnonzero((blink[1:] > 0) & (blink[:-1] == 0)) + 1


def test_baseline_is_a_motion_model() -> None:
    model = BaselineMotion()
    assert isinstance(model, MotionModel)
    assert model.name == "baseline"
    assert 0 <= model.lookahead_frames <= 2


@pytest.mark.parametrize("seed", range(8))
def test_silence_keeps_mouth_closed_and_blinks_within_3_s(seed: int) -> None:
    frames = run(silence(3.0), seed=seed)
    assert frames.shape == (3 * FPS, NUM_CHANNELS)
    assert np.mean(column(frames, "jawOpen") < 0.05) >= 0.95
    assert column(frames, "eyeBlinkLeft").max() == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_blinks_come_every_2_to_6_s_both_eyes_briefly(seed: int) -> None:
    frames = run(silence(60.0), seed=seed)
    left, right = column(frames, "eyeBlinkLeft"), column(frames, "eyeBlinkRight")
    np.testing.assert_array_equal(left, right)
    onsets = blink_onsets(frames)
    assert onsets[0] <= 3 * FPS
    intervals = np.diff(onsets)
    assert len(intervals) >= 9
    assert intervals.min() >= 2 * FPS and intervals.max() <= 6 * FPS
    for onset in onsets[:-1]:
        blink = left[onset : onset + 2 * FPS]
        duration = int(np.argmax(blink == 0))
        assert 4 <= duration <= 6
        assert blink.max() == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_head_sways_gently_within_5_degrees(seed: int) -> None:
    features, _ = speech_like(20.0, seed)
    for head_motion, limit_deg in ((1.0, 5.0), (2.0, 10.0)):
        frames = run(features, head_motion=head_motion, seed=seed)
        rotations = np.degrees(np.stack([column(frames, name) for name in ROTATIONS]))
        assert np.abs(rotations).max() <= limit_deg + 1e-4
        assert rotations.std(axis=1).min() > 0.1 * head_motion


def test_head_motion_zero_keeps_head_exactly_still() -> None:
    features, _ = speech_like(8.0)
    frames = run(features, head_motion=0.0)
    assert not np.any(frames[:, HEAD_SLICE])


def test_jaw_follows_loudness_and_opens_just_before_onset() -> None:
    features, envelope = speech_like(20.0, seed=1)
    frames = run(features)
    np.testing.assert_array_equal(frames, clip_frames(frames))
    jaw = column(frames, "jawOpen")
    assert np.corrcoef(jaw, envelope)[0, 1] > 0.8
    loud = envelope > 0.5 * envelope.max()
    assert jaw[loud].mean() > 0.3
    assert jaw[envelope == 0].mean() < jaw[loud].mean() - 0.2
    assert jaw.max() <= 0.7

    # Silence, then a steady vowel from exactly 1 s: the mouth starts opening a frame early.
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    vowel = sum(np.sin(2.0 * np.pi * 150.0 * k * t) / k for k in range(1, 20)) * (t >= 1.0)
    jaw = column(run(features_of((0.3 * vowel).astype(np.float32))), "jawOpen")
    assert jaw[FPS - 2] == 0.0
    assert jaw[FPS - 1] > 0.05
    assert jaw[FPS + 2] > 0.4


def test_spectral_shape_rounds_or_stretches_the_lips() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    syllables = 0.5 - 0.5 * np.cos(2.0 * np.pi * 3.0 * t)

    def sound(spectrum_hz: tuple[float, float], voiced: bool) -> np.ndarray:
        if voiced:
            low, high = spectrum_hz
            carrier = sum(np.sin(2.0 * np.pi * f * t) for f in np.arange(low, high, low))
        else:
            spectrum = np.fft.rfft(rng.standard_normal(len(t)))
            hz = np.fft.rfftfreq(len(t), 1.0 / SAMPLE_RATE)
            spectrum[(hz < spectrum_hz[0]) | (hz > spectrum_hz[1])] = 0.0
            carrier = np.fft.irfft(spectrum, len(t))
        carrier = carrier / np.abs(carrier).max()
        return run(features_of((0.5 * syllables * carrier).astype(np.float32)))

    dark = sound((150.0, 700.0), voiced=True)  # energy only under 700 Hz: an /u/-like vowel
    bright = sound((150.0, 4000.0), voiced=True)  # a full harmonic series: an open vowel
    hiss = sound((4500.0, 7500.0), voiced=False)  # an /s/-like fricative
    assert column(dark, "mouthFunnel").mean() > 0.1
    assert column(dark, "mouthPucker").mean() > 0.1
    assert column(bright, "mouthFunnel").mean() < 0.05
    assert column(hiss, "mouthStretchLeft").mean() > 0.1
    assert column(bright, "mouthStretchLeft").mean() < 0.02
    assert column(hiss, "mouthFunnel").max() == 0.0


@pytest.mark.parametrize("hop", [1, 2, 3, 7])
def test_streaming_in_any_hop_equals_generate(hop: int) -> None:
    features, _ = speech_like(6.0, seed=2)
    controls = MotionControls(head_motion=1.4, expressiveness=0.8, seed=3)
    expected = generate(BaselineMotion(), features, controls).frames
    model = BaselineMotion()
    model.start(controls)
    lookahead = model.lookahead_frames
    padded = np.concatenate([features, np.full((lookahead, 4, 80), SILENCE_FEATURE, np.float32)])
    chunks = [
        model.step(padded[begin : min(begin + hop, len(features)) + lookahead])
        for begin in range(0, len(features), hop)
    ]
    np.testing.assert_array_equal(np.concatenate(chunks), expected)


def test_start_resets_and_seeds_decide_blinks_and_sway() -> None:
    features, _ = speech_like(12.0, seed=4)
    model = BaselineMotion()
    first = generate(model, features, MotionControls(seed=7)).frames
    again = generate(model, features, MotionControls(seed=7)).frames
    other = generate(model, features, MotionControls(seed=8)).frames
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[:, HEAD_SLICE], other[:, HEAD_SLICE])
    assert not np.array_equal(blink_onsets(first), blink_onsets(other))
    # The mouth is the audio's alone.
    np.testing.assert_array_equal(column(first, "jawOpen"), column(other, "jawOpen"))


def test_expressiveness_scales_brows_and_zero_keeps_them_flat() -> None:
    features, _ = speech_like(12.0, seed=5)
    lively = run(features, expressiveness=1.0)
    flat = run(features, expressiveness=0.0)
    assert max(column(lively, name).max() for name in BROWS) > 0.1
    for name in BROWS + ["mouthSmileLeft", "mouthSmileRight"]:
        assert not np.any(column(flat, name))
    np.testing.assert_array_equal(column(flat, "jawOpen"), column(lively, "jawOpen"))
    assert math.isclose(float(column(lively, "mouthSmileLeft")[0]), 0.05, rel_tol=1e-6)
