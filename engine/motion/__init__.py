"""Motion models: audio features (plus controls) in, motion-space frames out.

Every model implements :class:`MotionModel`, one streaming interface that the live server
and the offline renderer share: :meth:`MotionModel.start` resets the state for a new stream,
then :meth:`MotionModel.step` is called with consecutive chunks of video-frame audio
features (``emolive.engine.audio.video_frame_features``), each carrying ``lookahead_frames`` frames
beyond the ones to generate. The lookahead frames of one call are the first frames of the
next, so a stream is cut into hops of any size without changing what a model may see.
:func:`generate` runs a model over a whole clip that way.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from emolive.engine.audio import MELS_PER_FRAME, N_MELS, SILENCE_FEATURE
from emolive.engine.motion_space import NUM_CHANNELS, MotionControls, MotionTrack

# Offline generation steps in the hop the live server uses (80 ms at 25 fps).
OFFLINE_HOP_FRAMES = 2
MAX_LOOKAHEAD_FRAMES = 2


@runtime_checkable
class MotionModel(Protocol):
    """A streaming audio-to-motion model."""

    name: str
    lookahead_frames: int  # video frames of features needed beyond those generated, ≤ 2
    backend: str | None  # the runtime of a learned model's network (None: no network)

    def start(self, controls: MotionControls) -> None:
        """Reset all state for a new stream driven by ``controls`` (seeded)."""
        ...

    def step(self, features: np.ndarray) -> np.ndarray:
        """Motion for the next ``n`` frames from ``(n + lookahead_frames, 4, 80)`` features.

        Returns ``(n, NUM_CHANNELS)`` float32 rows valid under ``clip_frames``.
        """
        ...


def hop_length(features: np.ndarray, lookahead_frames: int) -> int:
    """Validate ``step()`` input ``(n + lookahead, 4, 80)`` and return ``n``."""
    if features.ndim != 3 or features.shape[1:] != (MELS_PER_FRAME, N_MELS):
        raise ValueError(f"features must be (n + {lookahead_frames}, {MELS_PER_FRAME}, {N_MELS}), got {features.shape}")
    count = len(features) - lookahead_frames
    if count < 0:
        raise ValueError(f"need at least {lookahead_frames} lookahead frame(s), got {len(features)}")
    return count


def generate(model: MotionModel, features: np.ndarray, controls: MotionControls) -> MotionTrack:
    """Run ``model`` over a whole clip of ``(T, 4, 80)`` features -> ``T`` motion frames.

    The end is padded with digital-silence features for the lookahead, exactly as a live
    stream that goes quiet would be.
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3 or features.shape[1:] != (MELS_PER_FRAME, N_MELS):
        raise ValueError(f"features must be (T, {MELS_PER_FRAME}, {N_MELS}), got {features.shape}")
    lookahead = model.lookahead_frames
    if not 0 <= lookahead <= MAX_LOOKAHEAD_FRAMES:
        raise ValueError(f"{model.name}: lookahead {lookahead} outside 0..{MAX_LOOKAHEAD_FRAMES} frames")
    total = len(features)
    padding = np.full((lookahead, MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, dtype=np.float32)
    padded = np.concatenate([features, padding])
    model.start(controls)
    chunks = [np.zeros((0, NUM_CHANNELS), dtype=np.float32)]
    for begin in range(0, total, OFFLINE_HOP_FRAMES):
        end = min(begin + OFFLINE_HOP_FRAMES, total)
        chunks.append(model.step(padded[begin : end + lookahead]))
    return MotionTrack(np.concatenate(chunks))
