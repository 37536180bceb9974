"""Streaming per-band normalisation of log-mel features: forget the speaker and the channel.

Voices, microphones, rooms and codecs differ most in the long-term spectrum (tilt, formant
region, band limits, level); what the lips follow is how the spectrum moves. A running mean of
each mel band over the stream, subtracted from the audio window a model sees and replaced by
the training corpus's mean (the *prior*), removes the long-term part as it becomes known:

- the mean starts at the prior (a stream's first frames are read as an average voice) and
  follows the stream with a time constant of :data:`TAU_S`;
- digital silence (padding, a source that sends zeros) does not move it;
- one offset, the mean as it was before the window's first new frame, applies to the whole
  window, so a model sees the same numbers whether a stream is stepped one frame at a time
  or in longer hops, and training (``emolive.training.dataset``) computes them the same way offline.
"""

from __future__ import annotations

import math

import numpy as np

from emolive.engine.audio import N_MELS, SILENCE_FEATURE
from emolive.engine.motion_space import FPS

TAU_S = 2.0
ALPHA = 1.0 - math.exp(-1.0 / (TAU_S * FPS))
# A video frame whose loudest mel bin is this close to the log floor is digital silence.
SILENT_MARGIN = 0.1


def is_silent(frame: np.ndarray) -> bool:
    """Whether one video frame of features ``(4, 80)`` is digital silence."""
    return float(np.max(frame)) < SILENCE_FEATURE + SILENT_MARGIN


class RunningBandMean:
    """The running per-band mean of one stream (float64 state, updated frame by frame)."""

    def __init__(self, prior: np.ndarray) -> None:
        self.prior = np.asarray(prior, np.float64).reshape(N_MELS)
        self.mean = self.prior.copy()

    def offset(self) -> np.ndarray:
        """What to add to every feature row of the next window: prior - running mean, (80,)."""
        return (self.prior - self.mean).astype(np.float32)

    def update(self, frames: np.ndarray) -> None:
        """Consume video frames ``(n, 4, 80)`` that the stream has moved past."""
        for frame in np.asarray(frames, np.float64):
            if not is_silent(frame):
                self.mean += ALPHA * (frame.mean(axis=0) - self.mean)


def offsets(frames: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``(T, 80)``: the offset of a window whose first new frame is ``t``, for every ``t`` of
    a stream of ``(T, 4, 80)`` features that starts at ``frames[0]``."""
    running = RunningBandMean(prior)
    out = np.empty((len(frames), N_MELS), np.float32)
    for t, frame in enumerate(frames):
        out[t] = running.offset()
        running.update(frame[None])
    return out
