"""The hand-built baseline motion model: signal processing on the log-mel, no training.

It stays as the reference every trained model must beat, so it is meant to be a fair
attempt, not a straw man:

- mouth: loudness in the speech band (200–4000 Hz) relative to a running peak, gated
  against noise, drives ``jawOpen`` through an attack/release follower at the 100 Hz mel
  rate; the follower reads 20 ms ahead so the mouth starts opening just before an onset.
  A dark spectrum (little energy above 900 Hz) rounds the lips, hiss above 4 kHz narrows
  the opening and stretches them; lips rest lightly closed in silence;
- accents (a syllable well above the recent mean and near the running peak) kick brow
  raises and small nods;
- seeded procedural blinks every 2–6 s and a sum-of-sinusoids head sway.

State is carried mel by mel and frame by frame, so any chunking of a stream gives exactly
the same motion.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from emolive.engine.audio import (
    FEATURE_MEAN,
    FEATURE_STD,
    FMAX,
    MEL_FILTERS,
    MELS_PER_FRAME,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
)
from emolive.engine.motion_space import FPS, INDEX, NUM_CHANNELS, MotionControls, clip_frames
from emolive.engine.motion import hop_length

MEL_RATE = FPS * MELS_PER_FRAME  # Hz: the follower runs on mel frames, not video frames
DB_PER_FEATURE = FEATURE_STD * 10.0 / math.log(10.0)  # features are scaled natural-log power

# Loudness. Levels are 10·log10 of the mean mel power in the speech band; speech peaking
# near full scale reads about -5 dB here, a quiet room about -60 dB, digital silence -80 dB.
SPEECH_BAND_HZ = (200.0, 4000.0)
DYNAMIC_RANGE_DB = 20.0  # the mouth goes from closed to fully open over this many dB
NOISE_GATE_DB = -55.0  # below this the mouth stays shut whatever came before
NOMINAL_PEAK_DB = -5.0
# The running peak falls slowly towards the gate + range, so quiet recordings still open
# the mouth while noise under the gate never does.
PEAK_DECAY_DB_PER_S = 3.0
PEAK_FLOOR_DB = NOISE_GATE_DB + DYNAMIC_RANGE_DB

# Mouth dynamics: jaws open faster than they close.
ATTACK_S = 0.05
RELEASE_S = 0.08
LEAD_MELS = 2  # the follower runs 20 ms ahead of the video frame it feeds
JAW_MAX = 0.65
UPPER_LIP_PER_JAW = 0.25
LOWER_LIP_PER_JAW = 0.35
REST_CLOSE = 0.1  # mouthClose when silent
REST_CLOSE_BELOW = 0.15  # openness under which the lips start to rest closed

# Spectral shape, measured as band means of the log-mel in dB relative to 200–900 Hz.
LOW_BAND_HZ = (200.0, 900.0)
BRIGHT_BANDS_HZ = ((900.0, 1500.0), (2500.0, 4000.0))  # F2 of /a/ and of /i/ land here
HISS_BAND_HZ = (4000.0, FMAX)
ROUNDED_BELOW_DB = 12.0  # both bright bands this far under the low band: /u/, /o/
ROUNDED_RANGE_DB = 8.0
HISS_ABOVE_DB = -5.0  # hiss band above the low band minus this: /s/, /sh/, /f/
HISS_RANGE_DB = 20.0
HISS_GATE_RANGE_DB = 10.0  # hiss counts in full this far over the noise gate
SHAPE_SMOOTHING = 0.5  # per video frame, against flicker between adjacent frames
VOICED_OPENNESS = 0.3  # rounding needs a voiced, fairly loud sound
FUNNEL_GAIN = 0.35
PUCKER_GAIN = 0.3
ROUNDED_JAW_CUT = 0.3
HISS_JAW_CUT = 0.5
STRETCH_GAIN = 0.3

# Accents: syllables that (nearly) set a new running peak and stand out of the recent mean.
ACCENT_NEAR_PEAK_DB = 2.0
ACCENT_MEAN_S = 1.0  # time constant of the running mean level
ACCENT_ABOVE_MEAN_DB = 6.0
ACCENT_RANGE_DB = 12.0  # above-mean excess that gives a full-strength accent
ACCENT_MIN_STRENGTH = 0.5
ACCENT_REFRACTORY_S = 1.0
BROW_PEAK_S = 0.24
NOD_PEAK_S = 0.2
BROW_INNER_GAIN = 0.35
BROW_OUTER_GAIN = 0.25
NOD_DEG = 1.5  # chin down (positive pitch) at full accent strength, head_motion 1
REST_SMILE = 0.05

# Blinks: onset-to-onset intervals uniform in 2–6 s; the first comes early enough that any
# 3 s of idling shows one.
BLINK_INTERVAL_S = (2.0, 6.0)
FIRST_BLINK_S = (1.0, 2.8)
BLINK_CLOSE = (0.5, 1.0)  # two frames down to fully shut
BLINK_OPEN_FRAMES = (2, 3, 4)  # then eased back open

# Head sway per axis at head_motion 1: the peak of a sum of sinusoids (weights sum to 1).
SWAY_COMPONENTS = 3
SWAY_HZ = (0.06, 0.35)
SWAY_PEAK = {
    "headPitch": math.radians(2.0),
    "headYaw": math.radians(3.0),
    "headRoll": math.radians(1.5),
    "headTx": 0.004,
    "headTy": 0.003,
}
HEAD_ROTATION_LIMIT_DEG = 5.0  # at head_motion 1; scales with it


def _band_centres_hz() -> np.ndarray:
    """Centre frequency of each mel band of ``emolive.engine.audio``: its filter's centroid."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    return fft_hz @ MEL_FILTERS / MEL_FILTERS.sum(axis=0)


def _band(centres: np.ndarray, band_hz: tuple[float, float]) -> slice:
    """The contiguous mel bins whose centres lie in ``band_hz``."""
    inside = np.flatnonzero((centres >= band_hz[0]) & (centres < band_hz[1]))
    return slice(int(inside[0]), int(inside[-1]) + 1)


_CENTRES = _band_centres_hz()
_SPEECH = _band(_CENTRES, SPEECH_BAND_HZ)
_LOW = _band(_CENTRES, LOW_BAND_HZ)
_BRIGHT = tuple(_band(_CENTRES, band) for band in BRIGHT_BANDS_HZ)
_HISS = _band(_CENTRES, HISS_BAND_HZ)

# What the per-frame loop of BaselineMotion.step produces, in this order.
_SIGNALS = ("openness", "rounded", "hiss", "brows", "nods", "blinks")
# What BaselineMotion._compose writes; symmetric shapes drive both sides alike.
_COMPOSED = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthStretch", "mouthUpperUp",
    "mouthLowerDown", "mouthSmile", "eyeBlink", "browInnerUp", "browOuterUp", "headPitch",
)
_SIDED = {"mouthStretch", "mouthUpperUp", "mouthLowerDown", "mouthSmile", "eyeBlink", "browOuterUp"}
_COMPOSED_REPEATS = [2 if name in _SIDED else 1 for name in _COMPOSED]
_COMPOSED_CHANNELS = [
    INDEX[channel]
    for name in _COMPOSED
    for channel in ((name + "Left", name + "Right") if name in _SIDED else (name,))
]
_ROTATIONS = [INDEX["headPitch"], INDEX["headYaw"], INDEX["headRoll"]]


class _Cues(NamedTuple):
    """What the audio of one chunk says, before any state is applied."""

    mel_db: np.ndarray  # speech-band level of every mel in the chunk
    frame_db: np.ndarray  # per frame to generate: loudest speech-band level in its window
    rounded: np.ndarray  # per frame, in [0, 1]: a dark, /u/-like spectrum
    hiss: np.ndarray  # per frame, in [0, 1]: an audible /s/-like spectrum


def _analyse(mels: np.ndarray, count: int) -> _Cues:
    """Cues from a chunk's mel rows, for its first ``count`` video frames.

    Each frame's window is the 40 ms of mels the mouth follower has just heard, lead included.
    """
    mels = mels.astype(np.float64)
    power = np.exp(mels * FEATURE_STD + FEATURE_MEAN)
    mel_db = 10.0 * np.log10(_mean(power[:, _SPEECH]))
    # Hiss may have nothing in the speech band, and noise floors are bright too: it counts
    # only when the speech or the hiss band is audible.
    audible_db = np.maximum(mel_db, 10.0 * np.log10(_mean(power[:, _HISS])))
    frames = slice(LEAD_MELS, LEAD_MELS + count * MELS_PER_FRAME)

    def frame_max(per_mel: np.ndarray) -> np.ndarray:
        return np.maximum.reduce(per_mel[frames].reshape(count, MELS_PER_FRAME), axis=1)

    audible = _unit((frame_max(audible_db) - NOISE_GATE_DB) / HISS_GATE_RANGE_DB)
    window = np.add.reduce(mels[frames].reshape(count, MELS_PER_FRAME, N_MELS), axis=1) / MELS_PER_FRAME
    low = _mean(window[:, _LOW])
    bright = np.maximum(*(_mean(window[:, band]) for band in _BRIGHT))
    rounded = ((low - bright) * DB_PER_FEATURE - ROUNDED_BELOW_DB) / ROUNDED_RANGE_DB
    hiss = ((_mean(window[:, _HISS]) - low) * DB_PER_FEATURE - HISS_ABOVE_DB) / HISS_RANGE_DB
    return _Cues(mel_db, frame_max(mel_db), _unit(rounded), _unit(hiss) * audible)


# np.mean and np.clip cost microseconds of Python wrapping each; a step makes several calls.
def _mean(rows: np.ndarray) -> np.ndarray:
    """Mean of each row."""
    return np.add.reduce(rows, axis=1) / rows.shape[1]


def _unit(values: np.ndarray) -> np.ndarray:
    """Values clipped to [0, 1]."""
    return np.minimum(np.maximum(values, 0.0), 1.0)


def _follower_coefficient(seconds: float, rate: float) -> float:
    """One-pole smoothing coefficient for a time constant at a sample rate."""
    return 1.0 - math.exp(-1.0 / (seconds * rate))


class _Pulse:
    """Gamma-shaped pulses ``s·(t/τ)·e^(1 - t/τ)`` (peak ``s`` at ``t = τ``) from kicks."""

    def __init__(self, peak_frames: float) -> None:
        self._decay = math.exp(-1.0 / peak_frames)
        self._scale = math.e / peak_frames
        self._impulse = 0.0  # sum of s·a^t
        self._ramp = 0.0  # sum of s·t·a^t

    def next(self, kick: float) -> float:
        """Advance one frame, adding a pulse of height ``kick`` that starts now."""
        self._ramp = self._decay * (self._ramp + self._impulse)
        self._impulse = self._decay * self._impulse + kick
        return self._scale * self._ramp


class _Blinker:
    """Both eyelids together: seeded intervals, a fixed close, a seeded-length reopening."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._frame = 0
        self._next_onset = self._frames(FIRST_BLINK_S)
        self._profile: list[float] = []

    def _frames(self, seconds: tuple[float, float]) -> int:
        """A seeded duration drawn uniformly from ``seconds``, in whole frames."""
        return round(self._rng.uniform(*seconds) * FPS)

    def next(self) -> float:
        """Closure of both eyes (0 open … 1 shut) for the next frame."""
        if self._frame == self._next_onset:
            reopen = int(self._rng.choice(BLINK_OPEN_FRAMES))
            # Cosine easing: lids slow down as they come to rest.
            opening = [0.5 + 0.5 * math.cos(math.pi * (k + 1) / (reopen + 1)) for k in range(reopen)]
            self._profile = list(BLINK_CLOSE) + opening
            self._next_onset += self._frames(BLINK_INTERVAL_S)
        self._frame += 1
        return self._profile.pop(0) if self._profile else 0.0


class _Sway:
    """Smooth seeded head drift: per axis a few sinusoids of random frequency and phase."""

    def __init__(self, rng: np.random.Generator) -> None:
        shape = (len(SWAY_PEAK), SWAY_COMPONENTS)
        low, high = np.log(SWAY_HZ)
        self._omega = 2.0 * np.pi * np.exp(rng.uniform(low, high, shape)) / FPS
        self._phase = rng.uniform(0.0, 2.0 * np.pi, shape)
        weights = rng.uniform(0.5, 1.0, shape)
        peaks = np.array(list(SWAY_PEAK.values()))[:, None]
        self._amplitude = weights / weights.sum(axis=1, keepdims=True) * peaks
        self._columns = [INDEX[name] for name in SWAY_PEAK]

    def add_to(self, frames: np.ndarray, first_frame: int, gain: float) -> None:
        """Add the sway of frames ``first_frame …`` at ``gain`` to rows of ``frames``."""
        t = np.arange(first_frame, first_frame + len(frames), dtype=np.float64)[:, None, None]
        offsets = (np.sin(t * self._omega + self._phase) * self._amplitude).sum(axis=2)
        frames[:, self._columns] += gain * offsets


class BaselineMotion:
    """Deterministic audio-driven motion; see the module docstring. Implements MotionModel."""

    name = "baseline"
    lookahead_frames = 1  # the follower's 20 ms lead reaches into the next video frame
    backend = None

    def __init__(self) -> None:
        self._attack = _follower_coefficient(ATTACK_S, MEL_RATE)
        self._release = _follower_coefficient(RELEASE_S, MEL_RATE)
        self._peak_decay_db = PEAK_DECAY_DB_PER_S / MEL_RATE
        self._mean_coefficient = _follower_coefficient(ACCENT_MEAN_S, FPS)
        self._refractory = round(ACCENT_REFRACTORY_S * FPS)
        self.start(MotionControls())

    def start(self, controls: MotionControls) -> None:
        """Reset for a new stream; blinks and sway draw from independent seeded streams."""
        self._controls = controls
        blink_seed, sway_seed = np.random.SeedSequence(controls.seed).spawn(2)
        self._blinker = _Blinker(np.random.default_rng(blink_seed))
        self._sway = _Sway(np.random.default_rng(sway_seed))
        self._frame = 0
        self._next_mel = 0  # first mel of the next chunk the follower has not consumed
        self._openness = 0.0
        self._peak_db = NOMINAL_PEAK_DB
        self._mean_db = NOISE_GATE_DB
        self._since_accent = self._refractory
        self._rounded = 0.0
        self._hiss = 0.0
        self._brows = _Pulse(BROW_PEAK_S * FPS)
        self._nod = _Pulse(NOD_PEAK_S * FPS)

    def step(self, features: np.ndarray) -> np.ndarray:
        """Motion for ``len(features) - 1`` frames; the last frame of features is lookahead."""
        features = np.asarray(features, dtype=np.float32)
        count = hop_length(features, self.lookahead_frames)
        cues = _analyse(features.reshape(-1, N_MELS), count)
        signals = np.zeros((len(_SIGNALS), count))
        openness, rounded, hiss, brows, nods, blinks = signals
        for t in range(count):
            last = (t + 1) * MELS_PER_FRAME + LEAD_MELS
            for mel in range(self._next_mel, last):
                self._follow(float(cues.mel_db[mel]))
            self._next_mel = last
            voiced = min(1.0, self._openness / VOICED_OPENNESS)
            self._rounded += SHAPE_SMOOTHING * (cues.rounded[t] * voiced - self._rounded)
            self._hiss += SHAPE_SMOOTHING * (cues.hiss[t] - self._hiss)
            openness[t], rounded[t], hiss[t] = self._openness, self._rounded, self._hiss
            accent = self._accent(float(cues.frame_db[t]))
            brows[t], nods[t] = self._brows.next(accent), self._nod.next(accent)
            blinks[t] = self._blinker.next()
        # Mels consumed so far count from the start of the next chunk: our lookahead frame.
        self._next_mel -= count * MELS_PER_FRAME
        out = self._compose(signals)
        self._frame += count
        return clip_frames(out)

    def _compose(self, signals: np.ndarray) -> np.ndarray:
        """Motion rows from the per-frame signals of :meth:`step` (see ``_SIGNALS``)."""
        openness, rounded, hiss, brows, nods, blinks = signals
        controls = self._controls
        count = signals.shape[1]
        jaw = JAW_MAX * openness * (1.0 - HISS_JAW_CUT * hiss) * (1.0 - ROUNDED_JAW_CUT * rounded)
        brows = controls.expressiveness * brows
        columns = {
            "jawOpen": jaw,
            "mouthClose": REST_CLOSE * np.maximum(0.0, 1.0 - openness / REST_CLOSE_BELOW),
            "mouthFunnel": FUNNEL_GAIN * rounded,
            "mouthPucker": PUCKER_GAIN * rounded,
            "mouthStretch": STRETCH_GAIN * hiss * (1.0 - rounded),
            "mouthUpperUp": UPPER_LIP_PER_JAW * jaw,
            "mouthLowerDown": LOWER_LIP_PER_JAW * jaw,
            "mouthSmile": np.full(count, REST_SMILE * controls.expressiveness),
            "eyeBlink": blinks,
            "browInnerUp": BROW_INNER_GAIN * brows,
            "browOuterUp": BROW_OUTER_GAIN * brows,
            "headPitch": controls.head_motion * math.radians(NOD_DEG) * nods,
        }
        out = np.zeros((count, NUM_CHANNELS), dtype=np.float32)
        values = np.stack([columns[name] for name in _COMPOSED], axis=1)
        out[:, _COMPOSED_CHANNELS] = np.repeat(values, _COMPOSED_REPEATS, axis=1)
        self._sway.add_to(out, self._frame, controls.head_motion)
        limit = math.radians(HEAD_ROTATION_LIMIT_DEG) * controls.head_motion
        out[:, _ROTATIONS] = np.clip(out[:, _ROTATIONS], -limit, limit)
        return out

    def _follow(self, level_db: float) -> None:
        """Consume one mel frame: update the running peak and the mouth-opening follower."""
        self._peak_db = max(level_db, self._peak_db - self._peak_decay_db, PEAK_FLOOR_DB)
        target = 0.0
        if level_db > NOISE_GATE_DB:
            target = min(1.0, max(0.0, 1.0 + (level_db - self._peak_db) / DYNAMIC_RANGE_DB))
        rate = self._attack if target > self._openness else self._release
        self._openness += rate * (target - self._openness)

    def _accent(self, frame_db: float) -> float:
        """Strength (0 = none) of an accent starting at this frame, given its peak level."""
        above_mean = frame_db - self._mean_db
        self._mean_db += self._mean_coefficient * (max(frame_db, NOISE_GATE_DB) - self._mean_db)
        self._since_accent += 1
        is_accent = (
            above_mean > ACCENT_ABOVE_MEAN_DB
            and frame_db > self._peak_db - ACCENT_NEAR_PEAK_DB
            and self._since_accent > self._refractory
        )
        if not is_accent:
            return 0.0
        self._since_accent = 0
        return min(1.0, ACCENT_MIN_STRENGTH + (above_mean - ACCENT_ABOVE_MEAN_DB) / ACCENT_RANGE_DB)
