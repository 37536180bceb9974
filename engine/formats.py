"""The stream formats every stage agrees on: frame rate, audio rates, frame size.

Declared once here; the audio front end, the session, the encoders, the server's API and the
CLI take them from this module.
"""

from __future__ import annotations

FPS = 25  # video frames a second, the motion model's frame rate and the session's clock
FEATURE_RATE = 16_000  # Hz: audio is resampled to this for the log-mel features
VOICE_RATE = 48_000  # Hz: the voice a session emits with its frames (WebRTC's Opus rate)
FRAME_SIZE = 512  # px: the default square frame side
MIN_FRAME_SIZE, MAX_FRAME_SIZE = 64, 1024

FEATURE_SAMPLES_PER_FRAME = FEATURE_RATE // FPS  # 640
VOICE_SAMPLES_PER_FRAME = VOICE_RATE // FPS  # 1920
