"""The live streaming session: pushed voice audio in, lip-synced frames out, on one clock.

A session is a pipeline of stages, each a module of its own:

- :mod:`emolive.engine.playout`: the audio timeline (turns, resampling to 16 and 48 kHz, the voice
  of each frame, turn events);
- :class:`~emolive.engine.audio.StreamingLogMel`: features, one video frame of them per tick;
- :mod:`emolive.engine.compute`: the motion step and the render (and VP8 encode), off the loop;
- :mod:`emolive.engine.clock`: when each tick is due, and when a frame drops its render;
- :mod:`emolive.engine.backlog`: the bounded queues to the frame and event consumers.

Tick ``k`` consumes exactly one video frame of input from the pending turn audio, or silence
when none is queued, so the face idles and an underrun never stalls the clock:

- the feature reader takes 16 kHz samples up to ``640 (k + 1) + FEATURE_SPILL``: the
  last mel window of feature frame ``k`` reaches ``FEATURE_SPILL`` samples past the frame,
  so reading that far completes feature frame ``k`` at tick ``k``;
- the model steps over feature frames ``k - L .. k`` (``L`` = its lookahead), giving the
  motion of frame ``i = k - L``, which is rendered and emitted with the 48 kHz voice of
  ``[1920 i, 1920 (i + 1))``: the voice is delayed by exactly ``L`` frames, so A/V stay
  in sync at the client.

All audio bookkeeping stays on the event loop thread, so nothing needs a lock. While
:meth:`Session.encode_video` is on, each rendered frame is also encoded as VP8 where it is
rendered and carries its packet: a WebRTC track only sends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator

import cv2
import numpy as np

from emolive.engine.audio import HOP, MELS_PER_FRAME, N_MELS, SILENCE_FEATURE, WIN, StreamingLogMel, to_mono
from emolive.engine.backlog import Backlog
from emolive.engine.clock import FrameClock
from emolive.engine.compute import ComputeRoute
from emolive.engine.errors import BadInputError
from emolive.engine.formats import FEATURE_SAMPLES_PER_FRAME, FPS
from emolive.engine.media import clamp_vp8_bitrate
from emolive.engine.motion import MAX_LOOKAHEAD_FRAMES, MotionModel
from emolive.engine.motion.batching import MotionBatcher
from emolive.engine.playout import Playout
from emolive.engine.render_workers import RenderWorkers, VideoRequest
from emolive.engine.rig import Rig
from emolive.engine.session_types import SessionEvent, SessionFrame, SessionOptions, SessionStats

# A mel window starts WIN/2 - HOP/2 before its hop, so the last mel of a video frame needs
# this many samples of the next frame (120 at 16 kHz).
FEATURE_SPILL = (MELS_PER_FRAME - 1) * HOP + WIN // 2 + HOP // 2 - FEATURE_SAMPLES_PER_FRAME

IMAGE_BACKLOG_FRAMES = FPS // 2  # a consumer further behind gets frames without images
MAX_BACKLOG_FRAMES = 10 * FPS  # a consumer further behind than this loses whole frames
EVENT_BACKLOG = 256

log = logging.getLogger(__name__)
_SILENT_FEATURES = np.full((MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, dtype=np.float32)


def share_cores_between_sessions() -> None:
    """Process-wide setting for a process that runs many sessions (a server, a benchmark).

    Sessions already render in parallel, one frame per worker thread; OpenCV's own thread
    pool on top of that only adds hand-offs, and its idle workers spin between calls (up to
    ~10 % of a core with 4 sessions on 2 cores, and ~1 ms more CPU per 512² render, for no
    faster frames). One OpenCV thread per caller.
    """
    cv2.setNumThreads(1)


def _mono_float32(samples: np.ndarray, rate: int) -> np.ndarray:
    """Pushed samples -> (n,) float32 mono at nominal ±1, scaled as the offline path scales."""
    if rate <= 0:
        raise BadInputError(f"push_audio: sample rate must be positive, got {rate}")
    try:
        mono = to_mono(samples, np.float32)
    except ValueError as error:
        raise BadInputError(f"push_audio: {error}") from None
    if not np.isfinite(mono).all():
        raise BadInputError("push_audio: samples contain NaN or Inf")
    return np.ascontiguousarray(mono)


class Session:
    """One live stream: push turn audio, iterate frames and events; see the module docstring.

    Not thread-safe: call everything from the event loop. The clock starts with the first
    ``frames()`` call; iterate ``frames()`` from one consumer at a time.
    """

    def __init__(
        self,
        rig: Rig,
        model: MotionModel,
        options: SessionOptions = SessionOptions(),
        executor: concurrent.futures.Executor | None = None,
        batcher: MotionBatcher | None = None,
        render_workers: RenderWorkers | None = None,
    ) -> None:
        if not 0 <= model.lookahead_frames <= MAX_LOOKAHEAD_FRAMES:
            raise ValueError(f"{model.name}: lookahead {model.lookahead_frames} outside 0..{MAX_LOOKAHEAD_FRAMES}")
        self._options = options
        self._model = model
        self._model.start(options.controls)
        self._route = ComputeRoute(rig if options.render_video else None, model, executor, batcher, render_workers)
        self._clock = FrameClock(options.realtime, self._route.batcher)
        self._video: VideoRequest | None = None  # VP8 wanted with each rendered frame
        self._lookahead = model.lookahead_frames
        self._mel = StreamingLogMel()
        self._window: deque[np.ndarray] = deque(maxlen=self._lookahead + 1)
        self.stats = SessionStats()
        self._playout = Playout(self.stats)
        # Non-realtime frames wait for the consumer, so one queued frame is enough.
        self._frames_out: Backlog[SessionFrame] = Backlog(MAX_BACKLOG_FRAMES if options.realtime else 1)
        self._events_out: Backlog[SessionEvent] = Backlog(EVENT_BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def model(self) -> MotionModel:
        """The motion model this session steps."""
        return self._model

    @property
    def route(self) -> ComputeRoute:
        """Where this session's frames are computed."""
        return self._route

    @property
    def latency_ms(self) -> float:
        """Audio arrival -> first frame showing it: the frame itself, the lookahead, compute."""
        return (self._lookahead + 1) * 1000.0 / FPS + self.stats.last_compute_ms

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Queue voice audio (int or float, mono or (n, channels), any rate and chunk size).

        The first push after idle, end_of_turn or interrupt starts a new turn.
        """
        if self._closed:
            raise RuntimeError("push_audio on a closed session")
        rate = int(sample_rate)
        mono = _mono_float32(samples, rate)
        if not len(mono):
            return
        if not self._playout.turn_open and self._playout.queued_turns >= self._options.max_queued_turns:
            raise BadInputError(
                f"push_audio: {self._playout.queued_turns} turns are queued; at most "
                f"{self._options.max_queued_turns} may wait to play (wait for playback_finished or interrupt)"
            )
        pending = self._playout.pending_seconds + len(mono) / rate
        if pending > self._options.max_pending_seconds:
            raise BadInputError(
                f"push_audio: {pending:.1f} s of audio would be pending; at most "
                f"{self._options.max_pending_seconds:g} s may be queued"
            )
        self._playout.push(mono, rate)

    def end_of_turn(self) -> None:
        """No more audio for the current turn; playback_finished follows its last sample."""
        self._playout.end_turn()

    def encode_video(self, bitrate: int | None) -> None:
        """Encode every rendered frame as VP8 at ``bitrate`` b/s (clamped to what
        ``emolive.engine.media`` allows), or stop with None. A stream that starts, or restarts after a
        stop, begins with a keyframe; a change of bitrate keeps a pending keyframe request."""
        if bitrate is None:
            self._video = None
        else:
            keyframe = self._video is not None and self._video.keyframe
            self._video = VideoRequest(clamp_vp8_bitrate(bitrate), keyframe)

    def request_keyframe(self) -> None:
        """The next rendered frame's packet is a keyframe (a receiver lost the picture)."""
        if self._video is not None:
            self._video = VideoRequest(self._video.bitrate, keyframe=True)

    def interrupt(self) -> None:
        """Drop all pending turn audio now; the face relaxes to rest from its current pose."""
        if self._playout.interrupt():
            # Lookahead features of the dropped voice would keep the mouth talking for L frames.
            self._window.extend([_SILENT_FEATURES] * len(self._window))

    async def frames(self) -> AsyncIterator[SessionFrame]:
        """Every frame from the clock's start until close(), in order (the first call starts it).

        Only a consumer more than MAX_BACKLOG_FRAMES behind loses frames (the oldest).
        """
        self._start()
        while (frame := await self._frames_out.get()) is not None:
            yield frame

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Turn events until close()."""
        while (event := await self._events_out.get()) is not None:
            yield event

    async def close(self) -> None:
        """Stop the frame loop, end the iterators and release audio and executor; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._frames_out.close()
        self._events_out.close()
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.wait([self._task])
            await self._route.finish()
        finally:  # a caller that gives up waiting (a timeout) still gets everything released
            self._playout.clear()
            self._window.clear()
            self._route.release()

    def _start(self) -> None:
        if self._task is None and not self._closed:
            if self._route.batcher is not None:
                self._route.batcher.join()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="emolive-session-clock")
            self._task.add_done_callback(self._on_loop_done)

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        """End the iterators with the loop's error when it stops without close()."""
        if self._route.batcher is not None:
            self._route.batcher.leave()
        if self._closed:
            return
        # A cancelled compute job (an executor shut down under us) cancels the loop too.
        error = RuntimeError("session frame loop was cancelled") if task.cancelled() else task.exception()
        log.error("session frame loop stopped", exc_info=error)
        self._frames_out.close(error)
        self._events_out.close(error)

    async def _run(self) -> None:
        """The clock: one tick per frame, frames emitted ``L`` ticks after their audio."""
        self._clock.start()
        for tick in itertools.count():
            deadline = await self._clock.tick(tick, self._frames_out.drained)
            if self._closed:  # close() cancelled us, and an await on the way swallowed the cancel
                return
            self._window.append(self._read_features(tick))
            if len(self._window) > self._lookahead:
                job_s = await self._emit(tick - self._lookahead, render=self._should_render(self._clock.behind(deadline)))
                self._clock.computed(deadline, job_s)

    def _read_features(self, tick: int) -> np.ndarray:
        """Feature frame ``tick``: (MELS_PER_FRAME, N_MELS)."""
        count = FEATURE_SAMPLES_PER_FRAME + (FEATURE_SPILL if tick == 0 else 0)
        return self._mel.push(self._playout.read(count))

    def _should_render(self, late: bool) -> bool:
        # A frame that lands behind IMAGE_BACKLOG queued ones would lose its image anyway.
        return self._route.renders and not late and len(self._frames_out) < IMAGE_BACKLOG_FRAMES

    async def _emit(self, index: int, render: bool) -> float:
        """Compute frame ``index`` off the loop, then queue it with its voice and events;
        returns the compute job's latency in seconds (submit -> done)."""
        video = self._video
        if render and video is not None and video.keyframe:
            self._video = VideoRequest(video.bitrate)  # asked for once, with this frame
        computed = await self._route.frame(np.stack(self._window), index, render, video)
        # The voice is taken after compute so that an interrupt meanwhile silences it.
        audio, speaking, events = self._playout.pop_frame()
        self.stats.last_compute_ms = computed.compute_ms
        self.stats.frames_out += 1
        self.stats.frames_dropped += int(computed.rendered is None and self._route.renders)
        frame = SessionFrame(index, index / FPS, None, audio, computed.motion, speaking)
        if computed.rendered is not None:
            rendered = computed.rendered
            frame.image, frame.packet, frame.keyframe = rendered.image, rendered.packet, rendered.keyframe
        self._queue_frame(frame)
        for event in events:
            self._events_out.put(SessionEvent(*event, frame_index=index))
        return computed.job_s

    def _queue_frame(self, frame: SessionFrame) -> None:
        self._frames_out.put(frame)
        self.stats.frames_discarded = self._frames_out.discarded
        stale = self._frames_out.newest(IMAGE_BACKLOG_FRAMES)
        if stale is not None and stale.image is not None:
            stale.image = None  # bounds the memory a slow consumer holds in images
            self.stats.frames_dropped += 1
