"""What a live session is told and what it gives back: its options, frames, turn events and
counters (shared by the engine, the server's API and the benches)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emolive.engine.motion_space import MotionControls


@dataclass(frozen=True)
class SessionOptions:
    """How a session drives its model and paces its frames."""

    controls: MotionControls = MotionControls()
    render_video: bool = True
    realtime: bool = True  # False: frames as fast as the consumer takes them (tests, offline)
    max_pending_seconds: float = 120.0  # push_audio beyond this raises BadInputError
    # Turns queued and not yet played out; a push that would start one more raises
    # BadInputError (each turn costs bookkeeping on every tick until it has played).
    max_queued_turns: int = 32

    def __post_init__(self) -> None:
        if not self.max_pending_seconds > 0:
            raise ValueError(f"max_pending_seconds must be positive, got {self.max_pending_seconds}")
        if self.max_queued_turns < 1:
            raise ValueError(f"max_queued_turns must be at least 1, got {self.max_queued_turns}")


@dataclass
class SessionFrame:
    """One video frame and the voice that belongs to exactly this frame."""

    index: int
    timestamp: float  # index / FPS: seconds since the session's clock started
    image: np.ndarray | None  # RGB uint8; None if dropped or render_video is False
    audio: np.ndarray  # (SAMPLES_PER_FRAME_OUT,) int16 at OUTPUT_RATE, silence when idle
    motion: np.ndarray  # (NUM_CHANNELS,) float32
    speaking: bool  # this frame carries turn audio
    packet: bytes | None = None  # the image as VP8 while encode_video is on
    keyframe: bool = False  # the packet is a VP8 keyframe


@dataclass(frozen=True)
class SessionEvent:
    """``playback_started`` or ``playback_finished`` of a turn, at the frame it happened."""

    type: str
    turn: int
    position_ms: int = 0
    interrupted: bool = False
    frame_index: int = 0


@dataclass
class SessionStats:
    """Counters a server exports as metrics."""

    frames_out: int = 0  # frames the loop emitted
    frames_dropped: int = 0  # emitted frames whose image was dropped (compute or consumer behind)
    frames_discarded: int = 0  # whole frames lost to a consumer over MAX_BACKLOG_FRAMES behind
    underrun_frames: int = 0  # ticks that inserted silence into an open turn
    last_compute_ms: float = 0.0  # model step + render of the last frame
    turns_started: int = 0
    turns_finished: int = 0
    turns_interrupted: int = 0
