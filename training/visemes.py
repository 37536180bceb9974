"""Ground-truth mouth openness from timed phones: the target the lip-sync tests and the
training corpus measure a face against.

Each ARPAbet phone has a jaw/lip openness in [0, 1]; the per-phone step signal is blurred by
about 30 ms (coarticulation: the mouth moves toward the next sound before it starts) and
sampled at video frame centres. Bilabials (m, b, p) are hard closures: the lips meet
whatever the neighbours do, so frames whose centre falls inside one are 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from emolive.engine.audio import HOP, SAMPLE_RATE
from emolive.training.tts import Phone

__all__ = ["OPENNESS", "BILABIALS", "SILENCES", "PHONE_CLASSES", "openness", "closure_intervals", "phone_classes"]

BILABIALS = frozenset({"m", "b", "p", "em"})
SILENCES = frozenset({"pau", "sil", "sp", "h#", "#"})

OPENNESS: dict[str, float] = {
    # open vowels
    "aa": 1.0, "ae": 0.95, "ah": 0.9, "ao": 0.9, "aw": 0.9, "ay": 0.9,
    # mid vowels
    "eh": 0.7, "ey": 0.65, "er": 0.6, "ow": 0.65, "oy": 0.7, "ax": 0.55, "axr": 0.55,
    # close vowels
    "ih": 0.45, "ix": 0.45, "iy": 0.35, "uh": 0.4, "uw": 0.35, "ux": 0.35,
    # semivowels, liquids, syllabic consonants
    "w": 0.25, "y": 0.3, "r": 0.3, "l": 0.3, "el": 0.35, "hh": 0.35, "hv": 0.35,
    # tongue stops and nasals: jaw nearly closed, lips apart
    "t": 0.2, "d": 0.2, "dx": 0.25, "n": 0.2, "nx": 0.2, "en": 0.2, "k": 0.25, "g": 0.25,
    "ng": 0.25, "eng": 0.25, "q": 0.2,
    # fricatives and affricates
    "s": 0.15, "z": 0.15, "sh": 0.2, "zh": 0.2, "ch": 0.2, "jh": 0.2, "th": 0.2, "dh": 0.2,
    # labiodentals: lower lip on the upper teeth
    "f": 0.1, "v": 0.1,
    **{b: 0.0 for b in BILABIALS},
    **{s: 0.0 for s in SILENCES},
}

_COARTICULATION_S = 0.030  # full width at half maximum of the blur
_GRID_HZ = 1000


def openness(phones: Sequence[Phone], fps: float = 25.0, n_frames: int | None = None) -> np.ndarray:
    """Mouth openness in [0, 1] for each video frame, sampled at frame centres (t + 0.5) / fps.

    ``n_frames`` defaults to the frames that start before the last phone ends; frames past
    the phones are silence (0). Unknown phone symbols raise ``ValueError``.
    """
    end = phones[-1].end if phones else 0.0
    if n_frames is None:
        n_frames = math.ceil(end * fps - 1e-9)
    if n_frames <= 0:
        return np.zeros(0, np.float32)
    # Step signal on a 1 ms grid, long enough for every frame centre plus the blur's reach.
    horizon = max(end, n_frames / fps) + 4 * _COARTICULATION_S
    grid = np.zeros(int(math.ceil(horizon * _GRID_HZ)) + 1, np.float64)
    for p in phones:
        try:
            value = OPENNESS[p.symbol]
        except KeyError:
            raise ValueError(f"openness: no viseme for phone {p.symbol!r}") from None
        a, b = int(round(p.start * _GRID_HZ)), int(round(p.end * _GRID_HZ))
        grid[a:b] = value
    sigma = _COARTICULATION_S / 2.3548 * _GRID_HZ
    radius = int(math.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    smooth = np.convolve(grid, kernel / kernel.sum(), mode="same")
    centres = (np.arange(n_frames) + 0.5) / fps
    out = smooth[np.minimum(np.round(centres * _GRID_HZ).astype(int), len(grid) - 1)]
    for p in phones:
        if p.symbol in BILABIALS:
            out[(centres >= p.start) & (centres < p.end)] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def closure_intervals(phones: Sequence[Phone], min_duration: float = 0.04) -> list[tuple[float, float]]:
    """(start, end) of each lip closure: runs of adjacent bilabials lasting >= ``min_duration`` s."""
    runs: list[tuple[float, float]] = []
    for p in phones:
        if p.symbol not in BILABIALS:
            continue
        if runs and abs(runs[-1][1] - p.start) < 1e-9:  # "jump", "some boats": the lips stay shut across both
            runs[-1] = (runs[-1][0], p.end)
        else:
            runs.append((p.start, p.end))
    return [(s, e) for s, e in runs if e - s >= min_duration]


# Every phone the corpus labels, silences as one class (index 0): the classes of the phone
# recognition the teacher's audio encoder also learns (training.train). Sorted: OPENNESS is
# partly built from sets, whose order changes with each interpreter's string hashing.
PHONE_CLASSES: tuple[str, ...] = ("sil",) + tuple(sorted(s for s in OPENNESS if s not in SILENCES))
_CLASS_INDEX = {s: (0 if s in SILENCES else PHONE_CLASSES.index(s)) for s in OPENNESS}


def phone_classes(phones: Sequence[Phone], n_frames: int, rate_hz: float = SAMPLE_RATE / HOP) -> np.ndarray:
    """(n_frames,) int16 index into :data:`PHONE_CLASSES` of the phone at each frame centre
    (frames of ``1 / rate_hz`` s from t = 0, by default the mel frames; silence where no phone is)."""
    out = np.zeros(n_frames, np.int16)
    centres = (np.arange(n_frames) + 0.5) / rate_hz
    for p in phones:
        try:
            index = _CLASS_INDEX[p.symbol]
        except KeyError:
            raise ValueError(f"phone_classes: unknown phone {p.symbol!r}") from None
        out[(centres >= p.start) & (centres < p.end)] = index
    return out
