"""Tests for engine.audio: decoding, resampling, log-mel framing, streaming, bad input.

Every input is generated at test time (numpy -> soundfile, PyAV encoders, flite for speech).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from emolive.engine.audio import (
    FEATURE_MEAN,
    FEATURE_STD,
    HOP,
    MEL_FILTERS,
    MELS_PER_FRAME,
    N_MELS,
    SAMPLE_RATE,
    SILENCE_FEATURE,
    DecodedAudio,
    StreamingLogMel,
    decode_audio,
    load_audio,
    log_mel,
    to_mono_16k,
    video_frame_features,
)
from emolive.engine.errors import BadInputError


def sine(freq: float, seconds: float, rate: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """(n, channels) float32 sine, the same in every channel."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def encode_av(path: Path, samples: np.ndarray, rate: int, codec: str) -> Path:
    """Encode (n, 1|2) float samples with an FFmpeg encoder (container from the suffix)."""
    layout = {1: "mono", 2: "stereo"}[samples.shape[1]]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def peak_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Frequency of the strongest FFT bin of a Hann-windowed signal."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 4 s of synthetic speech (flite), 16 kHz mono."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. She sells sea shells by the shore."
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(path)], check=True)
    return load_audio(path)


# --- decoding ---------------------------------------------------------------------------


def write_wav_pcm16(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, subtype="PCM_16")
    return path


def write_wav_float(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def write_flac(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, format="FLAC")
    return path


def write_ogg(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, format="OGG", subtype="VORBIS")
    return path


def write_mp3(path: Path, x: np.ndarray, rate: int) -> Path:
    return encode_av(path, x, rate, "mp3")


def write_m4a(path: Path, x: np.ndarray, rate: int) -> Path:
    return encode_av(path, x, rate, "aac")


# (writer, suffix, samples the codec may add or drop at 16 kHz: encoder priming/padding)
FORMATS = [
    (write_wav_pcm16, ".wav", 0),
    (write_wav_float, ".wav", 0),
    (write_flac, ".flac", 0),
    (write_ogg, ".ogg", 0),
    (write_mp3, ".mp3", 800),
    (write_m4a, ".m4a", 800),
]


@pytest.mark.parametrize(
    ("writer", "suffix", "slack"), FORMATS, ids=lambda v: getattr(v, "__name__", None)
)
def test_each_format_decodes(
    tmp_path: Path, writer: Callable[[Path, np.ndarray, int], Path], suffix: str, slack: int
) -> None:
    path = writer(tmp_path / f"tone{suffix}", sine(440, 1.0, 44100, channels=2), 44100)
    decoded = decode_audio(path)
    assert isinstance(decoded, DecodedAudio)
    assert decoded.rate == 44100 and decoded.samples.shape[1] == 2
    assert decoded.samples.dtype == np.float32 and decoded.source == str(path)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SAMPLE_RATE) <= slack
    assert abs(peak_hz(x) - 440) < 2
    assert 0.3 < np.sqrt(np.mean(x[2000:-2000] ** 2)) * np.sqrt(2) < 0.6


@pytest.mark.parametrize(
    ("rate", "channels"), [(11025, 3), (8000, 1), (44100, 2), (96000, 1), (22050, 6)]
)
def test_odd_rates_and_channel_counts(tmp_path: Path, rate: int, channels: int) -> None:
    path = write_wav_pcm16(tmp_path / "odd.wav", sine(1000, 0.5, rate, channels), rate)
    x = load_audio(path)
    assert abs(len(x) - SAMPLE_RATE // 2) <= 1
    assert abs(peak_hz(x) - 1000) < 3


def test_resample_44k_stereo_keeps_frequency_and_duration() -> None:
    x = to_mono_16k(sine(1000, 1.5, 44100, channels=2), 44100)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 24000) <= SAMPLE_RATE // 1000  # ±1 ms
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    assert abs(freqs[np.argmax(power)] - 1000) < 1
    assert power[np.abs(freqs - 1000) < 10].sum() / power.sum() > 0.999


def test_to_mono_16k_scales_integers_and_averages_channels() -> None:
    full = np.full((1600, 2), 32767, dtype=np.int16)
    full[:, 1] = -32768
    assert np.allclose(to_mono_16k(full, SAMPLE_RATE), 0.0, atol=1e-4)
    assert np.allclose(to_mono_16k(full[:, 0], SAMPLE_RATE), 1.0, atol=1e-4)
    assert np.allclose(to_mono_16k(np.full(100, 255, dtype=np.uint8), SAMPLE_RATE), 127 / 128)
    assert np.allclose(to_mono_16k(np.full(100, 2**30, dtype=np.int32), SAMPLE_RATE), 0.5)


def test_truncated_mp3_decodes_what_is_there(tmp_path: Path) -> None:
    whole = write_mp3(tmp_path / "whole.mp3", sine(440, 2.0, 44100), 44100)
    cut = tmp_path / "cut.mp3"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    x = load_audio(cut)
    assert 0.8 * SAMPLE_RATE < len(x) < 1.2 * SAMPLE_RATE
    assert abs(peak_hz(x) - 440) < 3


def test_all_zero_audio_is_valid_silence(tmp_path: Path) -> None:
    path = write_wav_pcm16(tmp_path / "silence.wav", np.zeros(8000, np.float32), 8000)
    x = load_audio(path)
    assert len(x) == SAMPLE_RATE and not x.any()
    assert np.all(log_mel(x) == np.float32(SILENCE_FEATURE))


def bad_inputs(tmp: Path) -> dict[str, Path]:
    """One file per kind of bad input, written into tmp."""
    paths = {
        "missing": tmp / "missing.wav",
        "directory": tmp / "folder.wav",
        "text_as_wav": tmp / "notes.wav",
        "text_as_mp3": tmp / "notes.mp3",
        "empty": tmp / "empty.wav",
        "nan": tmp / "nan.wav",
        "inf": tmp / "inf.wav",
        "truncated_m4a": tmp / "cut.m4a",
        "over_an_hour": tmp / "long.wav",
        "over_an_hour_ffmpeg": tmp / "long.bin",
    }
    paths["directory"].mkdir()
    paths["text_as_wav"].write_text("not audio at all\n" * 40)
    paths["text_as_mp3"].write_text("not audio at all\n" * 40)
    sf.write(paths["empty"], np.zeros((0, 1)), SAMPLE_RATE)
    for kind, value in (("nan", np.nan), ("inf", np.inf)):
        x = np.zeros(1000, np.float32)
        x[500] = value
        sf.write(paths[kind], x, SAMPLE_RATE, subtype="FLOAT")
    m4a = write_m4a(tmp / "whole.m4a", sine(440, 1.0, 44100), 44100).read_bytes()
    paths["truncated_m4a"].write_bytes(m4a[: len(m4a) // 2])
    # 3601 samples at 1 Hz: over an hour of audio in 7 kB.
    sf.write(paths["over_an_hour"], np.zeros(3601, np.int16), 1, subtype="PCM_16")
    shutil.copy(paths["over_an_hour"], paths["over_an_hour_ffmpeg"])
    return paths


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "directory",
        "text_as_wav",
        "text_as_mp3",
        "empty",
        "nan",
        "inf",
        "truncated_m4a",
        "over_an_hour",
        "over_an_hour_ffmpeg",
    ],
)
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = bad_inputs(tmp_path)[kind]
    with pytest.raises(BadInputError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert path.name in message
    assert "\n" not in message and "\r" not in message
    assert isinstance(caught.value, ValueError)


# --- log-mel ---------------------------------------------------------------------------


def test_filterbank_has_no_empty_band() -> None:
    assert MEL_FILTERS.shape == (257, N_MELS)
    assert np.all(MEL_FILTERS.sum(axis=0) > 0)


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 16000, 16001])
def test_frame_count_is_ceil_n_over_hop(n: int) -> None:
    mel = log_mel(np.zeros(n, np.float32))
    assert mel.shape == (math.ceil(n / HOP), N_MELS) and mel.dtype == np.float32


def test_frame_k_is_the_window_centred_on_sample_160k_plus_80() -> None:
    x = np.zeros(1600, np.float32)
    x[6 * HOP + 80] = 1.0  # the centre of frame 6; frames 5 and 7 see it at 40 samples in
    mel = log_mel(x)
    touched = np.flatnonzero(np.any(mel != np.float32(SILENCE_FEATURE), axis=1))
    assert touched.tolist() == [5, 6, 7]
    assert np.argmax(mel.mean(axis=1)) == 6


def test_tone_lands_in_the_band_around_its_frequency() -> None:
    mel = log_mel(sine(1000, 0.5, SAMPLE_RATE)[:, 0])
    band = int(np.argmax(mel[10:-10].mean(axis=0)))
    centre_hz = float(np.fft.rfftfreq(512, 1 / SAMPLE_RATE)[np.argmax(MEL_FILTERS[:, band])])
    assert abs(centre_hz - 1000) < 70


def test_silence_gives_the_silence_feature_everywhere() -> None:
    assert SILENCE_FEATURE == pytest.approx((math.log(1e-8) - FEATURE_MEAN) / FEATURE_STD)
    mel = log_mel(np.zeros(SAMPLE_RATE, np.float32))
    assert np.all(mel == np.float32(SILENCE_FEATURE))
    assert np.all(video_frame_features(mel) == np.float32(SILENCE_FEATURE))


def test_speech_lies_roughly_in_minus_3_to_3(speech: np.ndarray) -> None:
    mel = log_mel(speech)
    low, high = np.percentile(mel, [1, 99])
    assert -3.5 < low and high < 3.5
    assert -1.5 < float(np.median(mel)) < 1.5


def test_louder_speech_gives_higher_features(speech: np.ndarray) -> None:
    quiet, loud = log_mel(0.1 * speech), log_mel(0.5 * speech)
    voiced = loud.mean(axis=1) > np.percentile(loud.mean(axis=1), 30)
    assert loud[voiced].mean() > quiet[voiced].mean() + 0.5
    assert np.all(loud[voiced].mean(axis=1) > quiet[voiced].mean(axis=1))


def test_log_mel_rejects_non_finite_samples() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        log_mel(np.array([0.0, np.nan], np.float32))


# --- streaming --------------------------------------------------------------------------


def varied_signal(n: int) -> np.ndarray:
    """Amplitude-modulated noise plus a tone: every band varies from frame to frame."""
    rng = np.random.default_rng(7)
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (envelope * (0.2 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 220 * t))).astype(
        np.float32
    )


def chunk_sizes(kind: str, n: int) -> list[int]:
    """Chunk sizes summing to n: fixed, or random in [0, 900] with a fixed seed."""
    if kind == "random":
        sizes = np.random.default_rng(1234).integers(0, 900, size=n).tolist()
    else:
        sizes = [int(kind)] * n
    out, total = [], 0
    for size in sizes:
        if total >= n:
            break
        out.append(min(size, n - total))
        total += out[-1]
    return out


@pytest.mark.parametrize("chunking", ["1", "7", "320", "160", "401", "random"])
@pytest.mark.parametrize("n", [4000, 4321])
def test_streaming_equals_batch(chunking: str, n: int) -> None:
    x = varied_signal(n)
    stream = StreamingLogMel()
    pieces, pushed = [], 0
    for size in chunk_sizes(chunking, n):
        out = stream.push(x[pushed : pushed + size])
        pushed += size
        assert out.shape[1:] == (N_MELS,) and out.dtype == np.float32
        pieces.append(out)
        # Frame k is out as soon as its window's last sample (160k + 279) has arrived.
        assert sum(len(p) for p in pieces) == max(0, (pushed - 280) // HOP + 1)
    assert stream.samples_seen == n
    pieces.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(pieces), log_mel(x), atol=1e-5, rtol=0)


def test_stream_flush_reset_and_reuse() -> None:
    x = varied_signal(1000)
    stream = StreamingLogMel()
    first = np.concatenate((stream.push(x), stream.flush()))
    assert stream.flush().shape == (0, N_MELS)
    with pytest.raises(RuntimeError):
        stream.push(x)
    stream.reset()
    assert stream.samples_seen == 0
    second = np.concatenate((stream.push(x), stream.flush()))
    np.testing.assert_array_equal(first, second)
    assert StreamingLogMel().flush().shape == (0, N_MELS)


def test_streaming_push_cost_does_not_grow_with_history() -> None:
    chunk = varied_signal(320)
    stream = StreamingLogMel()
    start = time.perf_counter()
    emitted = sum(len(stream.push(chunk)) for _ in range(3000))  # a minute in 20 ms chunks
    assert (time.perf_counter() - start) / 3000 < 2e-3
    assert emitted == (3000 * 320 - 280) // HOP + 1


def test_log_mel_of_ten_seconds_is_fast() -> None:
    x = varied_signal(10 * SAMPLE_RATE)
    log_mel(x)
    best = min(_timed(log_mel, x) for _ in range(5))
    assert best < 0.05


def _timed(fn: Callable[[np.ndarray], object], x: np.ndarray) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


# --- video frames -----------------------------------------------------------------------


def test_video_frames_group_four_mels_each_aligned_to_the_frame_start() -> None:
    mel = log_mel(varied_signal(101 * HOP))
    assert len(mel) == 101
    frames = video_frame_features(mel)
    assert frames.shape == (26, MELS_PER_FRAME, N_MELS) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames[:25].reshape(100, N_MELS), mel[:100])
    np.testing.assert_array_equal(frames[25, 0], mel[100])
    assert np.all(frames[25, 1:] == np.float32(SILENCE_FEATURE))


@pytest.mark.parametrize(
    ("n_mels", "fps", "expected"),
    [(100, 25.0, 25), (100, 30.0, 30), (7, 25.0, 2), (0, 25.0, 0)],
)
def test_video_frame_count(n_mels: int, fps: float, expected: int) -> None:
    mel = np.zeros((n_mels, N_MELS), np.float32)
    assert video_frame_features(mel, fps).shape == (expected, MELS_PER_FRAME, N_MELS)


def test_video_frames_at_50_fps_start_every_second_mel() -> None:
    mel = np.arange(40, dtype=np.float32)[:, None].repeat(N_MELS, axis=1)
    frames = video_frame_features(mel, fps=50.0)
    assert frames.shape[0] == 20
    assert frames[:, 0, 0].tolist() == list(range(0, 40, 2))
