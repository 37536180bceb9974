"""Audio front end: decode any audio file, resample to 16 kHz mono, compute log-mel features.

Features are 80 log-mel bands at 100 Hz (hop 10 ms, 25 ms Hann window), normalised with fixed
constants so that speech lies roughly in [-3, 3], and grouped 4 per 25 fps video frame.

Framing: mel frame ``k`` describes the 10 ms ``[160k, 160k + 160)``; its 400-sample window is
centred on sample ``160k + 80`` and the signal is zero outside ``[0, n)``, so ``n`` samples give
``ceil(n / 160)`` frames. :class:`StreamingLogMel` emits each frame as soon as the samples its
window needs have arrived, and its output equals :func:`log_mel` of the whole signal for any
chunking: :func:`log_mel` is the streaming form fed one chunk.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from emolive.engine.errors import BadInputError
from emolive.engine.formats import FEATURE_RATE

SAMPLE_RATE = FEATURE_RATE  # the features are defined at this rate
HOP = 160
WIN = 400
N_FFT = 512
N_MELS = 80
MELS_PER_FRAME = 4
FMIN = 55.0
FMAX = 7600.0
MAX_SECONDS = 3600.0
# soxr's low-quality filter for audio -> 16 kHz features: it rolls off from 6 kHz (-3 dB at 6.5,
# -24 dB at 7.3) where the high-quality one is flat to 7.5, but it holds back half as much of a
# live stream (20 ms instead of 37 at 48 kHz input), and that is latency. The mel bands it dims
# are the top few of 80, which the streaming per-band normalisation re-levels: on held-out TTS
# and real speech pushed at 48 kHz the student's scores are the same either way (docs/model.md).
FEATURE_RESAMPLE_QUALITY = "LQ"

# Containers libsndfile decodes exactly and fast; everything else (MP3, AAC/M4A, video files,
# and these when libsndfile refuses them) goes to FFmpeg, which also copes with truncated MP3.
_SOUNDFILE_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc", ".au", ".caf"}
)

LOG_FLOOR = 1e-8
# Calibrated on flite and espeak-ng speech peaking around -3 dBFS: ln(mel power) of voiced and
# unvoiced frames spans about -16 .. +2.6 (mean about -8, spread about 4.4), which these map to
# about -2.6 .. +2.7. Digital silence, ln(1e-8) = -18.4, lands just below -3.
FEATURE_MEAN = -7.0
FEATURE_STD = 3.5
SILENCE_FEATURE: float = (math.log(LOG_FLOOR) - FEATURE_MEAN) / FEATURE_STD

# The window starts this many samples before the 10 ms it describes.
_LEAD = WIN // 2 - HOP // 2
# Samples after a frame's start that its window still needs.
_TAIL = WIN - _LEAD


# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_MEL_HZ_PER_MEL = 200.0 / 3.0
_MEL_AT_1K = 1000.0 / _MEL_HZ_PER_MEL
_MEL_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Hz -> Slaney mel."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _MEL_AT_1K + np.log(np.maximum(hz, 1000.0) / 1000.0) / _MEL_LOG_STEP
    return np.where(hz < 1000.0, hz / _MEL_HZ_PER_MEL, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Slaney mel -> Hz."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = 1000.0 * np.exp(_MEL_LOG_STEP * (mel - _MEL_AT_1K))
    return np.where(mel < _MEL_AT_1K, mel * _MEL_HZ_PER_MEL, log_part)


def _mel_filterbank() -> np.ndarray:
    """(N_FFT // 2 + 1, N_MELS) triangular Slaney filters with area normalisation."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= 2.0 / (upper - lower)
    return np.ascontiguousarray(weights.T)


_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)  # periodic Hann, peak at WIN/2
MEL_FILTERS = _mel_filterbank()
_BLOCK = 256


def _windows_to_features(windows: np.ndarray) -> np.ndarray:
    """(k, WIN) float64 sample windows -> (k, N_MELS) float32 normalised log-mel."""
    features = np.empty((len(windows), N_MELS), dtype=np.float32)
    # Blocks that stay in cache, zero-padded into one contiguous buffer: both about halve the
    # time of long inputs (rfft(..., n=N_FFT) pads row by row and is 4x slower still).
    padded = np.zeros((min(len(windows), _BLOCK), N_FFT))
    for start in range(0, len(windows), _BLOCK):
        block = windows[start : start + _BLOCK]
        rows = padded[: len(block)]
        np.multiply(block, _WINDOW, out=rows[:, :WIN])
        spectrum = np.fft.rfft(rows, axis=-1)
        power = spectrum.real**2 + spectrum.imag**2
        log_mel_power = np.log(power @ MEL_FILTERS + LOG_FLOOR)
        features[start : start + len(block)] = (log_mel_power - FEATURE_MEAN) / FEATURE_STD
    return features


def _check_finite_1d(samples: np.ndarray) -> np.ndarray:
    """Samples as a float64 vector; mono 16 kHz signals only, no NaN or Inf."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("samples contain NaN or Inf")
    return x


class StreamingLogMel:
    """Incremental :func:`log_mel`: push chunks of any size, pull the frames they complete.

    Keeps only the samples that frames not yet emitted still need (under ``WIN + chunk``), so a
    push costs time proportional to the chunk, never to the history.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything and start a new stream at sample 0."""
        # The buffer starts at absolute sample -_LEAD: frame 0's window reaches before sample 0.
        self._buffer = np.zeros(_LEAD, dtype=np.float64)
        self._buffer_start = -_LEAD
        self._samples_seen = 0
        self._next_frame = 0
        self._flushed = False

    @property
    def samples_seen(self) -> int:
        """Samples pushed since the stream started."""
        return self._samples_seen

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append 16 kHz mono samples; return the newly completed mel frames, (k, N_MELS)."""
        if self._flushed:
            raise RuntimeError("push() after flush(): call reset() to start a new stream")
        x = _check_finite_1d(samples)
        self._buffer = np.concatenate((self._buffer, x))
        self._samples_seen += len(x)
        ready = max(0, (self._samples_seen - _TAIL) // HOP + 1)
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        """End the stream: return the remaining frames, zero-padding past the last sample.

        After this, :meth:`push` raises until :meth:`reset`; a second flush returns no frames.
        """
        self._flushed = True
        total = -(-self._samples_seen // HOP)
        needed = (total - 1) * HOP + _TAIL - (self._buffer_start + len(self._buffer))
        if needed > 0:
            self._buffer = np.concatenate((self._buffer, np.zeros(needed)))
        return self._emit(total)

    def _emit(self, end_frame: int) -> np.ndarray:
        """Compute frames [next, end_frame) from the buffer and drop samples no longer needed."""
        count = end_frame - self._next_frame
        if count <= 0:
            return np.empty((0, N_MELS), dtype=np.float32)
        offset = self._next_frame * HOP - _LEAD - self._buffer_start
        span = self._buffer[offset : offset + (count - 1) * HOP + WIN]
        windows = np.lib.stride_tricks.sliding_window_view(span, WIN)[::HOP]
        features = _windows_to_features(windows)
        self._next_frame = end_frame
        keep_from = end_frame * HOP - _LEAD
        self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
        self._buffer_start = keep_from
        return features


def log_mel(samples16k: np.ndarray) -> np.ndarray:
    """(n,) 16 kHz mono samples -> (ceil(n / HOP), N_MELS) float32 normalised log-mel."""
    stream = StreamingLogMel()
    head = stream.push(samples16k)
    return np.concatenate((head, stream.flush()))


def video_frame_features(mel: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """Group mel frames per video frame: (len(mel), N_MELS) -> (T, MELS_PER_FRAME, N_MELS).

    Video frame ``t`` gets the MELS_PER_FRAME mel frames starting at its start time ``t / fps``
    (at 25 fps exactly mel frames ``4t .. 4t + 3``); frames past the end of the audio read as
    digital silence. ``T = ceil(duration * fps)``.
    """
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[1] != N_MELS:
        raise ValueError(f"expected mel of shape (n, {N_MELS}), got {mel.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mels_per_second = SAMPLE_RATE / HOP
    # The epsilons keep exact multiples (100 mel frames at 25 fps) from rounding up or down.
    count = math.ceil(len(mel) * fps / mels_per_second - 1e-9)
    starts = np.floor(np.arange(count) * mels_per_second / fps + 1e-9).astype(np.int64)
    index = starts[:, None] + np.arange(MELS_PER_FRAME)
    padded = np.concatenate(
        (mel, np.full((MELS_PER_FRAME + 1, N_MELS), SILENCE_FEATURE, dtype=np.float32))
    )
    return padded[np.minimum(index, len(padded) - 1)]


@dataclass(frozen=True)
class DecodedAudio:
    """Audio as stored in a file: (n, channels) float32 at nominal full scale ±1."""

    samples: np.ndarray
    rate: int
    source: str


_NO_SAMPLES = "contains no audio samples"


def _bad(path: str, reason: str) -> BadInputError:
    """A one-line BadInputError naming the file."""
    return BadInputError(" ".join(f"audio file {path!r}: {reason}".split()))


def _reason(error: Exception) -> str:
    """FFmpeg's description of an error, without the file name it repeats."""
    return getattr(error, "strerror", None) or str(error)


def _too_long(path: str, seconds: float) -> BadInputError:
    """The error for audio over MAX_SECONDS."""
    return _bad(path, f"is {seconds:.0f} s long; at most {MAX_SECONDS:.0f} s of audio is accepted")


def _decode_soundfile(path: str) -> DecodedAudio | None:
    """Decode with libsndfile, or None when it cannot read this file."""
    try:
        info = sf.info(path)
        if info.samplerate > 0 and info.frames / info.samplerate > MAX_SECONDS:
            raise _too_long(path, info.frames / info.samplerate)
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        return None
    return DecodedAudio(samples=samples, rate=int(rate), source=path)


def _decode_pyav(path: str) -> DecodedAudio:
    """Decode the first audio stream with FFmpeg, keeping whatever decodes before an error."""
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise _bad(path, f"is not a readable audio file ({_reason(error)})") from None
    with container:
        if not container.streams.audio:
            raise _bad(path, "contains no audio stream")
        if container.duration is not None and container.duration / av.time_base > MAX_SECONDS:
            raise _too_long(path, container.duration / av.time_base)
        resampler = av.AudioResampler(format="fltp")
        planes: list[np.ndarray] = []
        first: tuple[str, str, int] | None = None
        decoded = 0
        error_text = ""
        try:
            for frame in container.decode(container.streams.audio[0]):
                kind = (frame.format.name, frame.layout.name, frame.sample_rate)
                first = first or kind
                if kind != first:
                    # The stream changed format mid-way (concatenated broadcasts do this); the
                    # resampler is set up for the first format, so keep the audio before it.
                    break
                for out in resampler.resample(frame):
                    planes.append(out.to_ndarray())
                    decoded += out.samples
                if decoded > MAX_SECONDS * first[2]:
                    raise _too_long(path, decoded / first[2])
            planes.extend(out.to_ndarray() for out in resampler.resample(None))
        except av.FFmpegError as error:
            # A truncated or damaged stream: the audio before the damage is still usable.
            error_text = _reason(error)
    if first is None or not planes:
        if error_text:
            raise _bad(path, f"is not a readable audio file ({error_text})")
        raise _bad(path, _NO_SAMPLES)
    samples = np.ascontiguousarray(np.concatenate(planes, axis=1).T, dtype=np.float32)
    return DecodedAudio(samples=samples, rate=first[2], source=path)


def decode_audio(path: str | os.PathLike[str]) -> DecodedAudio:
    """Decode an audio file (WAV, FLAC, OGG, MP3, M4A, or anything FFmpeg reads) as stored.

    Raises BadInputError for a missing or unreadable file, no samples, NaN/Inf samples, or
    more than an hour of audio. Silence is valid.
    """
    name = os.fspath(path)
    if not Path(name).is_file():
        raise _bad(name, "does not exist" if not Path(name).exists() else "is not a file")
    decoded = None
    if Path(name).suffix.lower() in _SOUNDFILE_SUFFIXES:
        decoded = _decode_soundfile(name)
    decoded = decoded or _decode_pyav(name)
    if decoded.samples.size == 0:
        raise _bad(name, _NO_SAMPLES)
    if decoded.rate <= 0:
        raise _bad(name, f"has an invalid sample rate {decoded.rate}")
    if not np.isfinite(decoded.samples).all():
        raise _bad(name, "contains NaN or Inf samples")
    return decoded


def to_mono(samples: np.ndarray, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """(n,) or (n, channels) integer or float samples -> (n,) mono at nominal ±1.

    Integer samples are scaled by their type's range; channels are averaged."""
    x = np.asarray(samples)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected (n,) or (n, channels) samples, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.unsignedinteger):
        half = 2.0 ** (np.iinfo(x.dtype).bits - 1)
        x = (x.astype(dtype) - half) / half
    elif np.issubdtype(x.dtype, np.integer):
        x = x.astype(dtype) / 2.0 ** (np.iinfo(x.dtype).bits - 1)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(dtype, copy=False)
    else:
        raise ValueError(f"expected integer or float samples, got {x.dtype}")
    return x.mean(axis=1, dtype=dtype) if x.ndim == 2 else x


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """(n,) or (n, channels) samples of any dtype at ``rate`` -> (m,) float32 16 kHz mono,
    scaled as :func:`to_mono`; resampled with :data:`FEATURE_RESAMPLE_QUALITY`, as live sessions do."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    mono = to_mono(samples)
    if rate == SAMPLE_RATE or len(mono) == 0:
        return mono.astype(np.float32)
    return soxr.resample(mono, rate, SAMPLE_RATE, quality=FEATURE_RESAMPLE_QUALITY).astype(np.float32)


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a file and return (m,) float32 16 kHz mono samples."""
    decoded = decode_audio(path)
    return to_mono_16k(decoded.samples, decoded.rate)
