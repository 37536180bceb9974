"""Audio augmentation for the training corpus: make clean TTS sound like the speech a live
session really gets (any microphone, room, codec, level and speaker).

:func:`augment` applies a seeded random chain to one utterance and returns 16 kHz audio plus
the factor its timeline was stretched by (tempo changes move every phone):

- tempo (0.8-1.25, WSOLA, pitch kept) and pitch (±4 semitones) through ``sox``;
- a random smooth EQ (±8 dB over frequency, i.e. another microphone and mouth-to-mic path);
- reverb: a synthetic room impulse response (exponentially decaying noise, RT60 0.1-0.7 s);
- band-limiting or a codec: telephone band + 8 kHz µ-law, Opus or MP3 at low bit rates, G.722
  (wideband telephony, 64 kbit/s) (PyAV), or a plain low-pass;
- noise: white, pink or brown at 5-40 dB SNR, or mains hum;
- resampling through another rate (8, 11.025, 22.05, 44.1, 48 kHz) and back;
- gain: peak level from -35 to 0 dBFS, sometimes riding up and down by up to ±8 dB within the
  utterance (a speaker moving off the microphone, automatic gain control), occasionally clipped.

Everything draws from the ``numpy.random.Generator`` it is given: same seed, same audio.
"""

from __future__ import annotations

import io
import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 16000

__all__ = ["augment", "to_16k", "SR"]


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if rate == SR:
        return audio
    return soxr.resample(audio, rate, SR, quality="HQ").astype(np.float32)


def _sox(audio: np.ndarray, effects: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="emolive-aug-") as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, audio, SR, subtype="FLOAT")
        proc = subprocess.run(["sox", "-q", str(src), str(dst), *effects], capture_output=True, timeout=60)
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(f"sox {' '.join(effects)} failed: {proc.stderr.decode()[:200]}")
        out, _ = sf.read(dst, dtype="float32")
    return out.reshape(-1) if out.ndim == 1 else out.mean(axis=1)


def _tempo_pitch(audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    tempo = float(np.exp(rng.uniform(math.log(0.8), math.log(1.25))))
    cents = float(rng.uniform(-400, 400))
    effects = ["pitch", f"{cents:.0f}"] if rng.random() < 0.7 else []
    if rng.random() < 0.7:
        effects += ["tempo", "-s", f"{tempo:.4f}"]
    else:
        tempo = 1.0
    if not effects:
        return audio, 1.0
    out = _sox(audio, effects + ["rate", str(SR)])
    return out, len(out) / max(1, len(audio))


def _eq(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(audio)
    hz = np.fft.rfftfreq(len(audio), 1 / SR)
    knots_hz = np.array([0, 150, 400, 900, 1800, 3500, 6000, 8000.0])
    gains_db = rng.uniform(-8, 8, len(knots_hz))
    gains_db += rng.uniform(-6, 6) * np.log2((knots_hz + 100) / 1000)  # overall tilt
    curve = 10 ** (np.interp(hz, knots_hz, gains_db) / 20)
    return np.fft.irfft(spec * curve, len(audio)).astype(np.float32)


def _reverb(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: the direct sound, a pre-delay, and an exponentially decaying diffuse
    tail at a direct-to-reverberant ratio from a microphone across the room (-2 dB) to a close
    one (15 dB). (The tail's level was once a plain gain, which left most rooms at -10 to
    -19 dB, louder than any room users talk in; the model learnt that under reverb a lip
    closure cannot be heard, and closed for 0.55 of them even in a close-miked room.)"""
    rt60 = rng.uniform(0.1, 0.7)
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * SR)] *= np.linspace(0, 1, int(0.002 * SR))
    tail *= math.sqrt(10 ** (-rng.uniform(-2.0, 15.0) / 10) / float(np.sum(tail**2)))
    rir = np.concatenate([[1.0], np.zeros(int(rng.uniform(0.001, 0.02) * SR)), tail])
    from scipy.signal import fftconvolve

    wet = fftconvolve(audio, rir)[: len(audio)]
    return (wet / (np.abs(wet).max() + 1e-9) * (np.abs(audio).max() + 1e-9)).astype(np.float32)


def _mulaw(x: np.ndarray) -> np.ndarray:
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(np.clip(x, -1, 1))) / math.log1p(mu)
    y = np.round(y * 127) / 127
    return (np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu).astype(np.float32)


def _codec(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    kind = rng.choice(["telephone", "opus", "mp3", "g722", "lowpass"])
    if kind == "telephone":
        from scipy.signal import butter, sosfilt

        sos = butter(4, [300, 3400], btype="bandpass", fs=SR, output="sos")
        x = soxr.resample(sosfilt(sos, audio), SR, 8000)
        return soxr.resample(_mulaw(x), 8000, SR).astype(np.float32)[: len(audio)]
    if kind == "lowpass":
        from scipy.signal import butter, sosfilt

        cutoff = rng.uniform(3000, 7000)
        sos = butter(6, cutoff, btype="lowpass", fs=SR, output="sos")
        return sosfilt(sos, audio).astype(np.float32)
    try:
        return _av_roundtrip(audio, kind, int(rng.choice([12, 16, 24, 32])) * 1000)
    except Exception:  # a missing encoder: fall back to the telephone chain's band limit
        return audio


def _av_roundtrip(audio: np.ndarray, kind: str, bitrate: int) -> np.ndarray:
    import av

    codec, fmt, rate = {"opus": ("libopus", "ogg", 48000), "mp3": ("libmp3lame", "mp3", 22050),
                        "g722": ("g722", "wav", SR)}[kind]
    x = soxr.resample(audio, SR, rate).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        if kind != "g722":  # G.722 has one rate: 64 kbit/s
            stream.bit_rate = bitrate
        stream.layout = "mono"
        sample_format = "s16" if kind == "g722" else "flt"
        samples = (np.clip(x, -1, 1) * 32767).astype(np.int16) if kind == "g722" else x
        frame = av.AudioFrame.from_ndarray(samples[None, :], format=sample_format, layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buf.seek(0)
    planes = []
    with av.open(buf, "r", format=fmt) as inp:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
        for frame in inp.decode(audio=0):
            for f in resampler.resample(frame):
                planes.append(f.to_ndarray().reshape(-1))
    y = np.concatenate(planes) if planes else np.zeros(0, np.float32)
    # Encoders add a delay (Opus 6.5 ms pre-skip is removed by the decoder; MP3 adds ~1 frame):
    # align on the cross-correlation peak so the phone timings stay exact.
    lag = _best_lag(audio, y, int(0.06 * SR))
    y = y[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), y])
    out = np.zeros(len(audio), np.float32)
    out[: min(len(y), len(audio))] = y[: len(audio)]
    return out


def _best_lag(ref: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    # The compared stretch leaves room for every lag (a decoder that returns exactly the input's
    # length, such as G.722's, would otherwise be compared at lag 0 only).
    n = max(1, min(len(ref), len(y) - max_lag, 4 * SR))
    a, b = ref[:n].astype(np.float64), y[: n + max_lag].astype(np.float64)
    best, best_lag = -np.inf, 0
    for lag in range(0, max_lag, 8):
        seg = b[lag : lag + n]
        if len(seg) < n:
            break
        v = float(a @ seg)
        if v > best:
            best, best_lag = v, lag
    lo = max(0, best_lag - 8)
    for lag in range(lo, best_lag + 8):
        seg = b[lag : lag + n]
        if len(seg) == n:
            v = float(a @ seg)
            if v > best:
                best, best_lag = v, lag
    return best_lag


def _noise(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(audio)
    kind = rng.choice(["white", "pink", "brown", "hum"])
    if kind == "hum":
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    else:
        white = rng.standard_normal(n)
        if kind == "white":
            noise = white
        else:
            spec = np.fft.rfft(white)
            hz = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
            spec /= hz ** (0.5 if kind == "pink" else 1.0)
            noise = np.fft.irfft(spec, n)
    snr_db = rng.uniform(5, 40)
    speech_power = float(np.mean(audio[np.abs(audio) > 0.02 * np.abs(audio).max()] ** 2)) if np.any(audio) else 1e-4
    noise *= math.sqrt(speech_power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return (audio + noise).astype(np.float32)


def _resample_roundtrip(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rate = int(rng.choice([8000, 11025, 22050, 44100, 48000]))
    y = soxr.resample(soxr.resample(audio, SR, rate, quality=str(rng.choice(["LQ", "MQ", "HQ"]))), rate, SR)
    out = np.zeros(len(audio), np.float32)
    out[: min(len(y), len(audio))] = y[: len(audio)]
    return out


def augment(audio: np.ndarray, rate: int, rng: np.random.Generator, clean_prob: float = 0.15) -> tuple[np.ndarray, float]:
    """A randomly degraded 16 kHz copy of ``audio`` and the factor its timeline was stretched by."""
    x = to_16k(audio, rate)
    stretch = 1.0
    if rng.random() < clean_prob:
        return _gain(x, rng, quiet=False), 1.0
    if rng.random() < 0.6:
        x, stretch = _tempo_pitch(x, rng)
    if rng.random() < 0.7:
        x = _eq(x, rng)
    if rng.random() < 0.4:
        x = _reverb(x, rng)
    if rng.random() < 0.35:
        x = _codec(x, rng)
    if rng.random() < 0.5:
        x = _noise(x, rng)
    if rng.random() < 0.2:
        x = _resample_roundtrip(x, rng)
    return _gain(x, rng), stretch


def _gain(x: np.ndarray, rng: np.random.Generator, quiet: bool = True) -> np.ndarray:
    peak = float(np.abs(x).max()) + 1e-9
    level_db = rng.uniform(-35.0 if quiet else -20.0, 0.0)
    y = x / peak * 10 ** (level_db / 20)
    if quiet and rng.random() < 0.3:  # the level rides: 0.2-1 Hz, up to ±8 dB
        t = np.arange(len(y)) / SR
        ride_db = rng.uniform(2.0, 8.0) * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 6.3))
        y = y * 10 ** (ride_db / 20)
    if rng.random() < 0.05:  # overdriven input
        y = np.clip(y * rng.uniform(1.5, 3.0), -1, 1)
    return y.astype(np.float32)
