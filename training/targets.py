"""Motion targets for the training corpus: timed phones (+ the audio) -> one MotionFrame per video frame.

Three layers, each a function of its own:

- **lips** (:func:`lip_tracks`), deterministic: every phone is a viseme, a set of blendshape
  targets; the tracks blend them with per-viseme, per-channel *dominance* functions (Cohen &
  Massaro): a phone pulls each channel towards its target with a strength that is flat over
  the phone and decays with distance before it (anticipation) and after it (carry-over).
  Bilabials dominate the lip seal and always close it completely; F/V roll the lower lip to
  the upper teeth; OO/W/SH/R round and protrude the lips and are anticipated furthest. The jaw
  follows the phone openness table of ``emolive.training.visemes``, so the lip-sync ground truth and
  the targets agree on what "open" means;
- **prosody** (:func:`prosody_events`), from the audio: vowels whose loudness, pitch and length
  stand out of the utterance are accents; a seeded share of them raise the brows and nod;
- **free motion** (:func:`free_motion`), seeded: blinks (a gamma-distributed interval, 10-30 a
  minute), head sway (smooth band-limited noise; its amplitude is the head-motion intensity
  control, its frequency the speed control), slow brow/smile drift (the expressiveness control).

:func:`motion_targets` composes them into a ``(T, NUM_CHANNELS)`` float32 array valid under
``emolive.engine.motion_space.clip_frames``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emolive.engine.motion_space import FPS, INDEX, NUM_CHANNELS, clip_frames, mouth_gap
from emolive.training.tts import Phone
from emolive.training.visemes import BILABIALS, OPENNESS, SILENCES

__all__ = [
    "Controls", "VISEMES", "viseme_of", "lip_tracks", "prosody_events", "free_motion",
    "motion_targets", "mouth_gap", "closed_frames",
]

JAW_SCALE = 0.7  # jawOpen of the most open vowel


@dataclass(frozen=True)
class Controls:
    """The controls a target track was made with (and the model is conditioned on)."""

    head_motion: float = 1.0  # head sway / nod amplitude, 0 still … 2 lively
    speed: float = 1.0  # head sway frequency multiplier, 0.5 … 2
    expressiveness: float = 1.0  # brows, smiles, cheeks, 0 … 2

    def vector(self) -> np.ndarray:
        return np.array([self.head_motion, self.speed, self.expressiveness], np.float32)


# ----------------------------------------------------------------------------- visemes

# Lip channels every viseme sets (the rest stay at their previous/free values).
LIP_CHANNELS = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthStretch", "mouthPress",
    "mouthRollLower", "mouthRollUpper", "mouthUpperUp", "mouthLowerDown", "mouthSmile",
)
_SIDED = {"mouthStretch", "mouthPress", "mouthUpperUp", "mouthLowerDown", "mouthSmile"}


@dataclass(frozen=True)
class Viseme:
    """Blendshape targets (jaw comes from the openness table) and how strongly they hold."""

    shape: dict[str, float]
    dominance: float = 1.0  # strength of the pull over neighbours
    lead_s: float = 0.06  # anticipation: how far before the phone the pull reaches (1/e)
    lag_s: float = 0.05  # carry-over after it
    # Channels this viseme holds much harder than the rest (closure, rounding, lip-to-teeth).
    strong: tuple[str, ...] = ()


_ROUND = ("mouthFunnel", "mouthPucker")
VISEMES: dict[str, Viseme] = {
    "sil": Viseme({}, dominance=0.5, lead_s=0.06, lag_s=0.06),
    "PP": Viseme({"mouthClose": 1.0, "mouthPress": 0.35, "mouthRollLower": 0.1, "mouthRollUpper": 0.1},
                 dominance=2.0, lead_s=0.04, lag_s=0.03, strong=("mouthClose", "mouthPress")),
    "FF": Viseme({"mouthRollLower": 0.55, "mouthUpperUp": 0.25, "mouthLowerDown": 0.0},
                 dominance=1.5, lead_s=0.04, lag_s=0.03, strong=("mouthRollLower", "mouthUpperUp")),
    "TH": Viseme({"mouthStretch": 0.1, "mouthLowerDown": 0.1}, dominance=1.0),
    "DD": Viseme({"mouthStretch": 0.12, "mouthUpperUp": 0.05}, dominance=0.8),
    "KK": Viseme({"mouthStretch": 0.08}, dominance=0.6),
    "CH": Viseme({"mouthFunnel": 0.45, "mouthPucker": 0.3, "mouthUpperUp": 0.2, "mouthLowerDown": 0.2},
                 dominance=1.6, lead_s=0.08, lag_s=0.05, strong=_ROUND),
    "SS": Viseme({"mouthStretch": 0.3, "mouthSmile": 0.08}, dominance=1.2, strong=("mouthStretch",)),
    "NN": Viseme({"mouthStretch": 0.05}, dominance=0.6),
    "RR": Viseme({"mouthFunnel": 0.3, "mouthPucker": 0.3}, dominance=1.2, lead_s=0.08, strong=_ROUND),
    "LL": Viseme({"mouthStretch": 0.05, "mouthLowerDown": 0.1}, dominance=0.7),
    "AA": Viseme({"mouthLowerDown": 0.35, "mouthUpperUp": 0.2, "mouthStretch": 0.05}, dominance=1.0),
    "EH": Viseme({"mouthStretch": 0.2, "mouthLowerDown": 0.25, "mouthUpperUp": 0.15, "mouthSmile": 0.08}),
    "IH": Viseme({"mouthStretch": 0.35, "mouthSmile": 0.15, "mouthUpperUp": 0.1, "mouthLowerDown": 0.1}),
    "OH": Viseme({"mouthFunnel": 0.5, "mouthPucker": 0.25, "mouthLowerDown": 0.15}, dominance=1.2,
                 lead_s=0.09, strong=_ROUND),
    "OU": Viseme({"mouthFunnel": 0.35, "mouthPucker": 0.75}, dominance=1.6, lead_s=0.12, lag_s=0.06,
                 strong=_ROUND),
    "ER": Viseme({"mouthFunnel": 0.3, "mouthPucker": 0.2, "mouthLowerDown": 0.1}, lead_s=0.08, strong=_ROUND),
}

_PHONE_VISEME = {
    **{s: "sil" for s in SILENCES},
    **{b: "PP" for b in BILABIALS},
    "f": "FF", "v": "FF",
    "th": "TH", "dh": "TH",
    "t": "DD", "d": "DD", "dx": "DD", "q": "DD",
    "k": "KK", "g": "KK", "ng": "KK", "eng": "KK", "hh": "KK", "hv": "KK",
    "ch": "CH", "jh": "CH", "sh": "CH", "zh": "CH",
    "s": "SS", "z": "SS",
    "n": "NN", "nx": "NN", "en": "NN", "y": "IH",
    "r": "RR", "w": "OU",
    "l": "LL", "el": "LL",
    "aa": "AA", "ae": "AA", "ah": "AA", "ay": "AA", "aw": "AA",
    "eh": "EH", "ey": "EH", "ax": "EH", "axr": "ER", "er": "ER",
    "ih": "IH", "ix": "IH", "iy": "IH",
    "ao": "OH", "ow": "OH", "oy": "OH",
    "uh": "OU", "uw": "OU", "ux": "OU",
}
VOWELS = frozenset({
    "aa", "ae", "ah", "ao", "aw", "ay", "eh", "ey", "er", "ow", "oy", "ax", "axr", "ih", "ix", "iy",
    "uh", "uw", "ux", "el",
})
# Diphthongs glide: the second half of the phone takes this viseme.
_GLIDES = {"aw": "OU", "ow": "OU", "oy": "IH", "ay": "IH", "ey": "IH"}


def viseme_of(symbol: str) -> str:
    try:
        return _PHONE_VISEME[symbol]
    except KeyError:
        raise ValueError(f"no viseme for phone {symbol!r}") from None


def _segments(phones: Sequence[Phone]) -> list[tuple[str, float, float, float]]:
    """(viseme, start, end, jaw target) per segment; diphthongs split in two halves."""
    out = []
    for p in phones:
        if p.end <= p.start:
            continue
        jaw = OPENNESS[p.symbol] * JAW_SCALE
        vis = viseme_of(p.symbol)
        glide = _GLIDES.get(p.symbol)
        if glide is not None and p.duration > 0.08:
            mid = p.start + 0.55 * p.duration
            out.append((vis, p.start, mid, jaw))
            out.append((glide, mid, p.end, jaw * 0.85))
        else:
            out.append((vis, p.start, p.end, jaw))
    return out


# The lips seal within ~10 ms of a bilabial and part at its burst; the jaw's reach (FWHM
# ~30 ms) is the ground truth's coarticulation blur (training.visemes), so the targets and the
# lip-sync measure agree on when the mouth is open (wider reaches cost 0.05-0.1 r).
CLOSE_LEAD_S = 0.008
CLOSE_LAG_S = 0.006
JAW_CONSONANT_DOMINANCE = 0.9
JAW_LEAD_S = 0.02
JAW_LAG_S = 0.017
_VOWEL_VISEMES = frozenset({"AA", "EH", "IH", "OH", "OU", "ER"})


def _falloff(t: np.ndarray, starts: np.ndarray, ends: np.ndarray, lead, lag) -> np.ndarray:
    """Dominance shape: 1 inside a segment, a Gaussian-like decay before (lead) and after (lag)."""
    before = np.maximum(0.0, starts - t) / lead
    after = np.maximum(0.0, t - ends) / lag
    return np.exp(-((before + after) ** 2))


def _frame_bounds(n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n_frames) / fps, (np.arange(n_frames) + 1) / fps


def lip_tracks(phones: Sequence[Phone], n_frames: int, fps: float = FPS) -> np.ndarray:
    """(n_frames, NUM_CHANNELS) lip/jaw channels (others 0) by dominance blending.

    Each frame is the mean of the blend over 3 sub-samples 10 ms apart around its centre.
    """
    segments = _segments(phones)
    sub = 3  # sub-samples 10 ms apart around each frame centre
    t = ((np.arange(n_frames)[:, None] + 0.5 + np.array([-0.25, 0.0, 0.25])) / fps).reshape(-1, 1)
    starts = np.array([s[1] for s in segments])[None, :]
    ends = np.array([s[2] for s in segments])[None, :]
    vis = [VISEMES[s[0]] for s in segments]
    lead = np.array([v.lead_s for v in vis])[None, :]
    lag = np.array([v.lag_s for v in vis])[None, :]
    base_dom = np.array([v.dominance for v in vis])[None, :]
    is_vowel = np.array([s[0] in _VOWEL_VISEMES for s in segments])[None, :]
    out = np.zeros((n_frames, NUM_CHANNELS), np.float64)
    for name in LIP_CHANNELS:
        if name == "mouthClose":
            # The seal is no blend: it rises just before each bilabial and lets go at its burst.
            is_pp = np.array([s[0] == "PP" for s in segments])[None, :]
            seal = (_falloff(t, starts, ends, CLOSE_LEAD_S, CLOSE_LAG_S) * is_pp).max(axis=1, initial=0.0)
            out[:, INDEX[name]] = seal.reshape(n_frames, sub).mean(axis=1)
            continue
        if name == "jawOpen":
            # The jaw follows the openness table closely (vowels hold it, consonants less).
            falloff = _falloff(t, starts, ends, JAW_LEAD_S, JAW_LAG_S)
            weights = falloff * np.where(is_vowel, 1.0, JAW_CONSONANT_DOMINANCE) + 1e-9
            values = np.array([s[3] for s in segments])[None, :]
        else:
            falloff = _falloff(t, starts, ends, lead, lag)
            strong = np.array([2.5 if name in v.strong else 1.0 for v in vis])[None, :]
            weights = falloff * base_dom * strong + 1e-9
            values = np.array([v.shape.get(name, 0.0) for v in vis])[None, :]
        blend = (weights * values).sum(axis=1) / weights.sum(axis=1)
        per_frame = blend.reshape(n_frames, sub).mean(axis=1)
        for channel in ((name + "Left", name + "Right") if name in _SIDED else (name,)):
            out[:, INDEX[channel]] = per_frame
    _pin_closures(out, phones, fps)
    return out.astype(np.float32)


def _pin_closures(out: np.ndarray, phones: Sequence[Phone], fps: float) -> None:
    """Bilabials close the lips completely on every frame they overlap most of, whatever the blend."""
    n = len(out)
    lo, hi = _frame_bounds(n, fps)
    runs: list[list[float]] = []
    for p in phones:
        if p.symbol in BILABIALS:
            if runs and abs(runs[-1][1] - p.start) < 1e-9:
                runs[-1][1] = p.end
            else:
                runs.append([p.start, p.end])
    close, jaw = INDEX["mouthClose"], INDEX["jawOpen"]
    for start, end in runs:
        overlap = np.minimum(hi, end) - np.maximum(lo, start)
        frames = np.flatnonzero(overlap >= 0.5 * np.minimum(1.0 / fps, end - start) - 1e-9)
        frames = frames[(frames >= 0) & (frames < n)]
        if not len(frames):
            continue
        out[frames, close] = 1.0
        out[frames, jaw] = np.minimum(out[frames, jaw], 0.06)
        for side in ("Left", "Right"):
            for shape in ("mouthUpperUp", "mouthLowerDown"):
                out[frames, INDEX[shape + side]] = 0.0
        out[frames, INDEX["mouthFunnel"]] = np.minimum(out[frames, INDEX["mouthFunnel"]], 0.1)


CLOSED_GAP = 0.05


def closed_frames(frames: np.ndarray) -> np.ndarray:
    """True where the lips touch (gap under 0.05 of a fully open jaw)."""
    return mouth_gap(frames) < CLOSED_GAP


# ----------------------------------------------------------------------------- prosody


def _pitch_hz(audio: np.ndarray, rate: int, start: float, end: float) -> float:
    """Autocorrelation F0 over the middle 40 ms of [start, end) (nan when unvoiced)."""
    mid = 0.5 * (start + end)
    a, b = int((mid - 0.02) * rate), int((mid + 0.02) * rate)
    x = audio[max(0, a) : max(0, b)].astype(np.float64)
    if len(x) < int(0.03 * rate):
        return float("nan")
    x = x - x.mean()
    energy = float(x @ x)
    if energy <= 1e-9:
        return float("nan")
    ac = np.correlate(x, x, mode="full")[len(x) - 1 :]
    lo, hi = int(rate / 400), min(len(ac) - 1, int(rate / 60))
    if hi <= lo:
        return float("nan")
    lag = lo + int(np.argmax(ac[lo:hi]))
    return rate / lag if ac[lag] > 0.3 * energy else float("nan")


def prosody_events(phones: Sequence[Phone], audio: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(time, strength in 0..1) of accented vowels: loudness, pitch and length above the utterance's."""
    vowels = [p for p in phones if p.symbol in VOWELS and p.duration > 0.03]
    if len(vowels) < 2:
        return []
    audio = np.asarray(audio, np.float64)
    feats = []
    for p in vowels:
        a, b = int(p.start * rate), int(p.end * rate)
        seg = audio[a:b]
        db = 10 * math.log10(float(np.mean(seg * seg)) + 1e-10) if len(seg) else -100.0
        feats.append((db, _pitch_hz(audio, rate, p.start, p.end), p.duration))
    arr = np.array(feats, np.float64)

    def z(col: np.ndarray) -> np.ndarray:
        ok = np.isfinite(col)
        if ok.sum() < 2:
            return np.zeros_like(col)
        m, s = col[ok].mean(), col[ok].std() + 1e-6
        return np.where(ok, (col - m) / s, 0.0)

    score = 0.45 * z(arr[:, 0]) + 0.35 * z(np.log(arr[:, 1])) + 0.2 * z(arr[:, 2])
    events: list[tuple[float, float]] = []
    last = -10.0
    for p, s in sorted(zip(vowels, score), key=lambda item: -item[1]):
        if s < 0.6:
            break
        events.append((p.start, float(min(1.0, 0.4 + 0.3 * s))))
    events.sort()
    kept = []
    for t, s in events:  # at most one accent per 0.5 s
        if t - last >= 0.5:
            kept.append((t, s))
            last = t
    return kept


# ----------------------------------------------------------------------------- free motion

BLINK_MEAN_S = 3.4  # ~18 blinks a minute
BLINK_MIN_S = 1.0
HEAD_PEAK = {  # per axis at head_motion 1: the std of the sway
    "headPitch": math.radians(1.3), "headYaw": math.radians(1.9), "headRoll": math.radians(0.9),
    "headTx": 0.004, "headTy": 0.003,
}
HEAD_ROTATION_LIMIT = math.radians(5.0)  # at head_motion 1


def _smooth_noise(rng: np.random.Generator, n: int, hz: tuple[float, float], fps: float) -> np.ndarray:
    """Unit-std band-limited noise of length n: a sum of 6 sinusoids with random frequency and phase."""
    k = 6
    freqs = np.exp(rng.uniform(math.log(hz[0]), math.log(hz[1]), k))
    phases = rng.uniform(0, 2 * math.pi, k)
    amps = rng.uniform(0.3, 1.0, k) / np.sqrt(freqs / hz[0])  # more power at low frequencies
    t = np.arange(n) / fps
    x = (np.sin(2 * math.pi * freqs[None, :] * t[:, None] + phases) * amps).sum(axis=1)
    return x / math.sqrt(0.5 * float((amps**2).sum()))


def _pulse(n: int, fps: float, at: float, peak_s: float, width_s: float) -> np.ndarray:
    """A smooth bump peaking at time ``at + peak_s``: raised cosine of ``width_s`` total width."""
    t = np.arange(n) / fps
    x = (t - (at + peak_s)) / (0.5 * width_s)
    return np.where(np.abs(x) < 1.0, 0.5 + 0.5 * np.cos(np.pi * x), 0.0)


def free_motion(
    n_frames: int, controls: Controls, rng: np.random.Generator,
    accents: Sequence[tuple[float, float]] = (), speaking: np.ndarray | None = None, fps: float = FPS,
) -> np.ndarray:
    """Head pose, blinks, brows, smile, cheeks: (n_frames, NUM_CHANNELS), lip channels 0."""
    out = np.zeros((n_frames, NUM_CHANNELS), np.float64)
    n = n_frames
    # Blinks: first within ~0.3-2.5 s, then gamma intervals; both eyes, 2 frames down, 2-4 up.
    t_next = rng.uniform(0.3, 2.5)
    blink = np.zeros(n)
    while True:
        onset = int(round(t_next * fps))
        if onset >= n:
            break
        reopen = int(rng.integers(2, 5))
        depth = rng.uniform(0.92, 1.0)
        profile = [0.55 * depth, depth] + [depth * (0.5 + 0.5 * math.cos(math.pi * (k + 1) / (reopen + 1))) for k in range(reopen)]
        for k, v in enumerate(profile):
            if onset + k < n:
                blink[onset + k] = max(blink[onset + k], v)
        t_next += max(BLINK_MIN_S, rng.gamma(4.0, BLINK_MEAN_S / 4.0))
    out[:, INDEX["eyeBlinkLeft"]] = blink
    out[:, INDEX["eyeBlinkRight"]] = blink * rng.uniform(0.97, 1.0)

    # Head sway: band-limited noise; livelier while speaking.
    speed = controls.speed
    activity = np.ones(n) if speaking is None else 0.6 + 0.4 * _smooth_track(speaking.astype(np.float64), fps, 0.5)
    for name, std in HEAD_PEAK.items():
        sway = _smooth_noise(rng, n, (0.05 * speed, 0.45 * speed), fps)
        out[:, INDEX[name]] = controls.head_motion * std * sway * activity
    # Accents: brow raise + nod (+ small eyeWide), a seeded share of them.
    brow = np.zeros(n)
    nod = np.zeros(n)
    for t, strength in accents:
        if rng.random() < 0.75:
            brow += strength * rng.uniform(0.5, 1.0) * _pulse(n, fps, t, 0.12, rng.uniform(0.4, 0.7))
        if rng.random() < 0.6:
            nod += strength * rng.uniform(0.6, 1.0) * _pulse(n, fps, t, 0.1, rng.uniform(0.3, 0.5))
    brow = np.minimum(brow, 1.0)
    drift = 0.06 * np.maximum(0.0, _smooth_noise(rng, n, (0.03, 0.2), fps))
    e = controls.expressiveness
    out[:, INDEX["browInnerUp"]] = e * (0.45 * brow + drift)
    for side in ("Left", "Right"):
        out[:, INDEX["browOuterUp" + side]] = e * (0.35 * brow + 0.7 * drift)
        out[:, INDEX["eyeWide" + side]] = e * 0.15 * brow
    out[:, INDEX["headPitch"]] += controls.head_motion * math.radians(2.0) * nod
    smile = e * np.clip(0.06 + 0.05 * _smooth_noise(rng, n, (0.02, 0.1), fps), 0.0, 0.2)
    for side in ("Left", "Right"):
        out[:, INDEX["mouthSmile" + side]] = smile
        out[:, INDEX["cheekSquint" + side]] = 0.5 * smile
    # Start from rest: a stream starts with a buffer of rest frames, so the free channels fade in.
    ramp = np.clip(np.arange(n) / (0.6 * fps), 0.0, 1.0)[:, None]
    fade = [INDEX[c] for c in HEAD_PEAK] + [INDEX["browInnerUp"], INDEX["browOuterUpLeft"], INDEX["browOuterUpRight"],
                                            INDEX["mouthSmileLeft"], INDEX["mouthSmileRight"],
                                            INDEX["cheekSquintLeft"], INDEX["cheekSquintRight"]]
    out[:, fade] *= ramp
    limit = HEAD_ROTATION_LIMIT * controls.head_motion
    rot = [INDEX["headPitch"], INDEX["headYaw"], INDEX["headRoll"]]
    out[:, rot] = limit * np.tanh(out[:, rot] / max(limit, 1e-6)) if limit > 0 else 0.0
    return out


def _smooth_track(x: np.ndarray, fps: float, seconds: float) -> np.ndarray:
    """Symmetric moving average over ``seconds``."""
    k = max(1, int(round(seconds * fps)))
    return np.convolve(x, np.ones(k) / k, mode="same")


def motion_targets(
    phones: Sequence[Phone], audio: np.ndarray, rate: int, n_frames: int,
    controls: Controls, seed: int, fps: float = FPS,
) -> np.ndarray:
    """The full target track: lips (pinned to the phones) + prosody and seeded free motion."""
    lips = lip_tracks(phones, n_frames, fps)
    centres = (np.arange(n_frames) + 0.5) / fps
    speaking = np.zeros(n_frames, bool)
    for p in phones:
        if p.symbol not in SILENCES:
            speaking |= (centres >= p.start) & (centres < p.end)
    rng = np.random.default_rng(seed)
    free = free_motion(n_frames, controls, rng, prosody_events(phones, audio, rate), speaking, fps)
    # Free motion leaves the lip channels alone except for its resting smile, which adds.
    return clip_frames(free + lips)
