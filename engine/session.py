"""The live streaming session: pushed voice audio in, lip-synced frames out, on one clock.

Tick ``k`` of the frame loop runs at ``t0 + k / FPS`` (when not realtime: as soon as the
consumer has taken the previous frame). It consumes exactly one video frame of input from
the pending turn audio, or silence when none is queued, so the face idles and an underrun
never stalls the clock:

- the feature reader takes 16 kHz samples up to ``640 (k + 1) + FEATURE_SPILL``: the
  last mel window of feature frame ``k`` reaches ``FEATURE_SPILL`` samples past the frame,
  so reading that far completes feature frame ``k`` at tick ``k``;
- the model steps over feature frames ``k - L .. k`` (``L`` = its lookahead), giving the
  motion of frame ``i = k - L``, which is rendered and emitted with the 48 kHz voice of
  ``[1920 i, 1920 (i + 1))``: the voice is delayed by exactly ``L`` frames, so A/V stay
  in sync at the client.

Each turn is resampled twice, to 16 kHz (features) and 48 kHz (voice out), by its own
soxr streams, and the two are aligned by position: 16 kHz turn sample ``s`` is 48 kHz
samples ``3s .. 3s + 2``, and the reader only takes samples both streams have produced.
Resampling is lazy (a few pieces per tick), so pushing a minute of audio at once does not
block the event loop. soxr holds back part of each stream until more input or end_of_turn
arrives, and how much swings from one push to the next (6–37 ms for 16, 24 or 48 kHz input,
up to 178 ms for 8 kHz); the most a rate's streams can hold back is measured once per rate
(:func:`max_holdback`). A turn that has not ended starts as soon as the reader can take its
audio with that much, plus a margin for late pushes, still to come, and it may start
anywhere inside a tick's read, after silence: a source pushing at least in real time then
never runs the reader dry, the voice of a turn has no inserted gaps, and no turn waits for a
frame boundary. The margin adapts like a jitter buffer: 10 ms to begin with, grown by what
each underrun had to fill in (a source or network late by more than that), given back
slowly while the voice runs clean.

Model steps and renders run in an executor, one job at a time per session; all audio
bookkeeping stays on the event loop thread, so nothing needs a lock. With a shared
:class:`~engine.motion.batching.MotionBatcher` (diffusion models only), the model step goes to
the batcher instead, batched with the other sessions' steps of the same tick (their clocks
share its 25 fps grid), and only the render runs in the executor. With shared
:class:`~engine.render_workers.RenderWorkers`, the render goes to a worker process instead: the
loop sends the motion row and reads the reply itself (a thread in between would wait twice for
the interpreter lock), and the executor only steps a model the batcher does not. While
:meth:`Session.encode_video` is on, each rendered frame is also encoded as VP8 where it is
rendered and carries its packet: a WebRTC track only sends it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import cv2
import numpy as np
import soxr

from engine.audio import HOP, MELS_PER_FRAME, N_MELS, SAMPLE_RATE, SILENCE_FEATURE, WIN, StreamingLogMel, to_mono
from engine.errors import BadInputError
from engine.motion import MAX_LOOKAHEAD_FRAMES, MotionModel
from engine.motion.batching import MotionBatcher, batchable
from engine.motion_space import FPS, MotionControls
from engine.render_workers import FrameRenderer, RenderedFrame, RenderWorkers, VideoRequest, WorkerFrameRenderer
from engine.rig import Rig
from engine.video import clamp_vp8_bitrate

OUTPUT_RATE = 48000
SAMPLES_PER_FRAME_OUT = OUTPUT_RATE // FPS
SAMPLES_PER_FRAME_IN = SAMPLE_RATE // FPS
OUT_PER_IN = OUTPUT_RATE // SAMPLE_RATE
# A mel window starts WIN/2 - HOP/2 before its hop, so the last mel of a video frame needs
# this many samples of the next frame (120 at 16 kHz).
FEATURE_SPILL = (MELS_PER_FRAME - 1) * HOP + WIN // 2 + HOP // 2 - SAMPLES_PER_FRAME_IN

IMAGE_BACKLOG_FRAMES = FPS // 2  # a consumer further behind gets frames without images
MAX_BACKLOG_FRAMES = 10 * FPS  # a consumer further behind than this loses whole frames
EVENT_BACKLOG = 256
# A frame's render is skipped when compute is this far behind the clock: compute backlog is
# modelled from the jobs' own latencies (submit -> result), so a loop that wakes a tick late
# (other work on the event loop: WebRTC packets, sockets) does not cost a render.
RENDER_SLACK_S = 0.5 / FPS
# ...or when the loop itself has fallen this far behind: the frames must catch up anyway.
CATCH_UP_S = 4 / FPS
# 16 kHz samples a starting turn keeps in hand beyond the most its resamplers can hold back,
# for pushes that come late (network, event loop): at least this, at most MAX_...; an underrun
# adds the samples it had to fill in, and each tick without one takes back MARGIN_DECAY.
TURN_START_MARGIN = SAMPLE_RATE // 100
MAX_TURN_START_MARGIN = 8 * TURN_START_MARGIN
MARGIN_DECAY = 1  # 25 samples (1.6 ms) a second: from MAX_TURN_START_MARGIN back to the least in 45 s
RESAMPLE_PIECE_S = 0.1  # pushed audio is resampled in pieces this long, as the reader needs it

log = logging.getLogger(__name__)
T = TypeVar("T")
_SILENT_FEATURES = np.full((MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, dtype=np.float32)


def share_cores_between_sessions() -> None:
    """Process-wide setting for a process that runs many sessions (a server, a benchmark).

    Sessions already render in parallel, one frame per worker thread; OpenCV's own thread
    pool on top of that only adds hand-offs, and its idle workers spin between calls (up to
    ~10 % of a core with 4 sessions on 2 cores, and ~1 ms more CPU per 512² render, for no
    faster frames). One OpenCV thread per caller.
    """
    cv2.setNumThreads(1)


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


class _Fifo:
    """Float32 samples queued as chunks: append at the back, pop from the front."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self.size = 0

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.size += len(samples)

    def pad_to(self, size: int) -> None:
        """Append zeros up to ``size`` samples."""
        self.append(np.zeros(max(0, size - self.size), dtype=np.float32))

    def pop(self, count: int) -> np.ndarray:
        """The first ``count`` samples (at most ``size``)."""
        parts = []
        while count > 0:
            chunk = self._chunks[0]
            if len(chunk) <= count:
                parts.append(self._chunks.popleft())
            else:
                parts.append(chunk[:count])
                self._chunks[0] = chunk[count:]
            count -= len(parts[-1])
            self.size -= len(parts[-1])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class _Resampler:
    """One input rate -> the 16 kHz feature stream and the 48 kHz voice stream."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        # Same filter as engine.audio.to_mono_16k, so features match the offline path exactly.
        self._streams = [
            None if rate == out else soxr.ResampleStream(rate, out, 1, dtype="float32", quality="HQ")
            for out in (SAMPLE_RATE, OUTPUT_RATE)
        ]

    def process(self, samples: np.ndarray, last: bool = False) -> list[np.ndarray]:
        """Resample a chunk to both rates; ``last`` flushes the filters' tails."""
        return [samples if s is None else s.resample_chunk(samples, last=last) for s in self._streams]


@functools.cache
def max_holdback(rate: int) -> int:
    """The most 16 kHz samples (48 kHz ones / 3) the aligned streams of ``rate`` input hold back.

    soxr's output count does not depend on the samples, so pushing silence in 200 pieces of
    1–40 ms (fixed seed) through a fresh pair finds it, to within a few samples (95 at 8 kHz:
    ``TURN_START_MARGIN`` covers that); measured once per rate and process, in ~7 ms.
    """
    resampler = _Resampler(rate)
    pieces = np.random.default_rng(0).integers(1, rate // 25 + 1, size=200)
    pushed = out16 = out48 = 0
    worst = 0.0
    for size in pieces:
        samples16, samples48 = resampler.process(np.zeros(size, dtype=np.float32))
        pushed, out16, out48 = pushed + size, out16 + len(samples16), out48 + len(samples48)
        ideal16 = pushed * SAMPLE_RATE / rate
        worst = max(worst, ideal16 - out16, ideal16 - out48 / OUT_PER_IN)
    return math.ceil(worst)


class _Turn:
    """One turn's audio: raw pushed pieces, resampled on demand into aligned 16/48 kHz FIFOs."""

    def __init__(self, turn_id: int) -> None:
        self.id = turn_id
        self.ended = False  # end_of_turn (or interrupt): no more audio will come
        self.started = False  # playback_started was emitted
        self.read16 = 0  # 16 kHz samples handed to the feature reader
        self.output48 = 0  # 48 kHz samples emitted in frames
        self.raw_seconds = 0.0
        self.pushed16 = 0.0  # everything pushed, in 16 kHz samples
        self.holdback16 = 0  # the most the resamplers of the rates pushed can hold back
        self._raw: deque[tuple[int, np.ndarray]] = deque()
        self._resampler: _Resampler | None = None
        self._flushed = False
        self._in16 = _Fifo()
        self._in48 = _Fifo()

    @property
    def pending_seconds(self) -> float:
        return self.raw_seconds + self._in16.size / SAMPLE_RATE

    @property
    def exhausted(self) -> bool:
        """Ended and every sample read."""
        return self._flushed and self._in16.size == 0

    @property
    def done(self) -> bool:
        """Exhausted and every sample read has been output."""
        return self.exhausted and self.output48 == OUT_PER_IN * self.read16

    def push(self, samples: np.ndarray, rate: int) -> None:
        step = max(1, round(rate * RESAMPLE_PIECE_S))
        self._raw.extend((rate, samples[i : i + step]) for i in range(0, len(samples), step))
        self.raw_seconds += len(samples) / rate
        self.pushed16 += len(samples) * SAMPLE_RATE / rate
        self.holdback16 = max(self.holdback16, max_holdback(rate))

    def startable(self, margin: int) -> int:
        """16 kHz samples an open turn may start with and, if its source keeps pushing in real
        time, never run dry: what is pushed less what the resamplers may still hold back,
        less ``margin``."""
        return max(0, int(self.pushed16) - self.holdback16 - margin)

    def available(self, wanted: int) -> int:
        """16 kHz samples readable now (with their 48 kHz), resampling until ``wanted`` are."""
        while self._aligned() < wanted and (self._raw or (self.ended and not self._flushed)):
            self._resample_next()
        return self._aligned()

    def read(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` samples at 16 kHz and their ``3 count`` at 48 kHz."""
        self.read16 += count
        return self._in16.pop(count), self._in48.pop(OUT_PER_IN * count)

    def drop(self) -> None:
        """Forget all audio not yet read (interrupt)."""
        self._raw.clear()
        self._resampler = None
        self._in16, self._in48 = _Fifo(), _Fifo()
        self.raw_seconds = 0.0
        self.ended = self._flushed = True

    def _aligned(self) -> int:
        return min(self._in16.size, self._in48.size // OUT_PER_IN)

    def _resample_next(self) -> None:
        if not self._raw:
            self._finish_resampler()
            self._flushed = True
            return
        rate, piece = self._raw.popleft()
        self.raw_seconds = max(0.0, self.raw_seconds - len(piece) / rate)
        if self._resampler is None or self._resampler.rate != rate:
            self._finish_resampler()
            self._resampler = _Resampler(rate)
        self._append(*self._resampler.process(piece))

    def _finish_resampler(self) -> None:
        """Flush the current rate's filters and re-align the streams."""
        if self._resampler is None:
            return
        self._append(*self._resampler.process(np.zeros(0, dtype=np.float32), last=True))
        self._resampler = None
        # The two streams may end a sample apart; pad so 48 kHz stays exactly 3x 16 kHz.
        size16 = max(self._in16.size, -(-self._in48.size // OUT_PER_IN))
        self._in16.pad_to(size16)
        self._in48.pad_to(OUT_PER_IN * size16)

    def _append(self, samples16: np.ndarray, samples48: np.ndarray) -> None:
        self._in16.append(samples16)
        self._in48.append(samples48)


class _PlayoutEvent(NamedTuple):
    type: str
    turn: int
    position_ms: int
    interrupted: bool


class _Playout:
    """The session's audio timeline: turns in order, the feature reader, the voice out."""

    def __init__(self, stats: SessionStats) -> None:
        self._stats = stats
        self._turns: deque[_Turn] = deque()  # not yet finished, oldest first
        self._open: _Turn | None = None  # the turn push() appends to
        self._turn_ids = itertools.count(1)
        self._interrupted: list[_Turn] = []  # awaiting their playback_finished
        self.margin = TURN_START_MARGIN  # what a starting turn keeps in hand for late pushes
        # 48 kHz voice read with the features but not yet output, tagged with its turn.
        self._voice: deque[tuple[_Turn | None, np.ndarray]] = deque()

    @property
    def pending_seconds(self) -> float:
        return sum(turn.pending_seconds for turn in self._turns)

    @property
    def queued_turns(self) -> int:
        """Turns not yet played out."""
        return len(self._turns)

    @property
    def turn_open(self) -> bool:
        """Whether the next push extends a turn rather than starting one."""
        return self._open is not None

    def push(self, samples: np.ndarray, rate: int) -> None:
        if self._open is None:
            self._open = _Turn(next(self._turn_ids))
            self._turns.append(self._open)
            self._stats.turns_started += 1
        self._open.push(samples, rate)

    def end_turn(self) -> None:
        if self._open is not None:
            self._open.ended = True
            self._open = None

    def interrupt(self) -> bool:
        """Drop every unfinished turn, silencing its voice not yet output; True if any."""
        if not self._turns:
            return False
        for turn in self._turns:
            turn.drop()
        self._interrupted.extend(self._turns)
        self._stats.turns_interrupted += len(self._turns)
        self._turns.clear()
        self._open = None
        self._voice = deque((None, np.zeros_like(s)) if t is not None else (t, s) for t, s in self._voice)
        return True

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` 16 kHz samples for features; their voice is queued for output."""
        parts = []
        for turn in self._turns:
            if turn.exhausted:
                continue
            if turn.read16 == 0:
                # A turn starts as late inside this read as it must (silence before it), so
                # that resampler holdback never runs it dry; the module docstring says why.
                lead = 0 if turn.ended else count - min(count, turn.startable(self.margin))
                if lead:
                    parts.append(np.zeros(lead, dtype=np.float32))
                    self._voice.append((None, np.zeros(OUT_PER_IN * lead, dtype=np.float32)))
                    count -= lead
                if count == 0:
                    return np.concatenate(parts)
            take = turn.available(count)
            if take:
                samples16, samples48 = turn.read(min(take, count))
                parts.append(samples16)
                self._voice.append((turn, samples48))
                count -= len(samples16)
            if count == 0 or not turn.exhausted:
                break  # a turn not exhausted is waiting for audio: what is missing is silence
        underrun = count > 0 and any(not turn.exhausted for turn in self._turns)
        if underrun:
            self._stats.underrun_frames += 1
            self.margin = min(MAX_TURN_START_MARGIN, self.margin + count)
        else:
            self.margin = max(TURN_START_MARGIN, self.margin - MARGIN_DECAY)
        if count:
            parts.append(np.zeros(count, dtype=np.float32))
            self._voice.append((None, np.zeros(OUT_PER_IN * count, dtype=np.float32)))
        return np.concatenate(parts)

    def pop_frame(self) -> tuple[np.ndarray, bool, list[_PlayoutEvent]]:
        """The next frame's voice (int16), whether it carries turn audio, and turn events."""
        parts, events, speaking = [], [], False
        needed = SAMPLES_PER_FRAME_OUT
        while needed:
            turn, samples = self._voice[0]
            if len(samples) <= needed:
                self._voice.popleft()
            else:
                self._voice[0] = (turn, samples[needed:])
                samples = samples[:needed]
            parts.append(samples)
            needed -= len(samples)
            if turn is not None:
                speaking = True
                turn.output48 += len(samples)
                if not turn.started:
                    turn.started = True
                    events.append(_PlayoutEvent("playback_started", turn.id, 0, False))
        events.extend(self._finish_turns())
        audio = np.clip(np.round(np.concatenate(parts) * 32768.0), -32768, 32767).astype(np.int16)
        return audio, speaking, events

    def clear(self) -> None:
        """Release all audio (close)."""
        self._turns.clear()
        self._interrupted.clear()
        self._voice.clear()
        self._open = None

    def _finish_turns(self) -> list[_PlayoutEvent]:
        events = [self._finished(turn, interrupted=True) for turn in self._interrupted]
        self._interrupted.clear()
        while self._turns and self._turns[0].done:
            events.append(self._finished(self._turns.popleft(), interrupted=False))
            self._stats.turns_finished += 1
        return events

    @staticmethod
    def _finished(turn: _Turn, interrupted: bool) -> _PlayoutEvent:
        position_ms = round(turn.output48 * 1000 / OUTPUT_RATE)
        return _PlayoutEvent("playback_finished", turn.id, position_ms, interrupted)


class _Backlog(Generic[T]):
    """A bounded FIFO from the frame loop to one consumer; when full the oldest item goes."""

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._put = asyncio.Event()
        self._taken = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self.discarded = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.discarded += 1
        self._items.append(item)
        self._put.set()

    def newest(self, depth: int) -> T | None:
        """The item ``depth`` places behind the newest, if there is one."""
        return self._items[-1 - depth] if len(self._items) > depth else None

    async def get(self) -> T | None:
        """The oldest item; None once closed. Raises the error the producer failed with."""
        while not self._items and not self._closed:
            self._put.clear()
            await self._put.wait()
        if self._error is not None:
            raise self._error
        if self._closed:
            return None
        self._taken.set()
        return self._items.popleft()

    async def drained(self) -> None:
        """Wait until the consumer has taken every item."""
        while self._items and not self._closed:
            self._taken.clear()
            await self._taken.wait()

    def close(self, error: BaseException | None = None) -> None:
        self._closed = True
        self._error = error
        self._items.clear()
        self._put.set()
        self._taken.set()


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
        self._renderer: FrameRenderer | WorkerFrameRenderer | None = None
        if options.render_video:
            self._renderer = render_workers.stream(rig) if render_workers is not None else FrameRenderer(rig)
        self._video: VideoRequest | None = None  # VP8 wanted with each rendered frame
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emolive-session")
        self._batcher = batcher if batcher is not None and batchable(model) else None
        self._lookahead = model.lookahead_frames
        self._mel = StreamingLogMel()
        self._window: deque[np.ndarray] = deque(maxlen=self._lookahead + 1)
        self.stats = SessionStats()
        self._playout = _Playout(self.stats)
        # Non-realtime frames wait for the consumer, so one queued frame is enough.
        self._frames_out: _Backlog[SessionFrame] = _Backlog(MAX_BACKLOG_FRAMES if options.realtime else 1)
        self._events_out: _Backlog[SessionEvent] = _Backlog(EVENT_BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self._job: concurrent.futures.Future | None = None
        self._compute_ready = float("-inf")  # loop time the modelled compute queue is free
        self._closed = False

    @property
    def model(self) -> MotionModel:
        """The motion model this session steps."""
        return self._model

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
        ``engine.video`` allows), or stop with None. A stream that starts, or restarts after a
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
            if self._job is not None:
                # A cancelled await does not stop the worker: let it finish with the renderer.
                await asyncio.wait([asyncio.wrap_future(self._job)])
                self._job = None
        finally:  # a caller that gives up waiting (a timeout) still gets everything released
            self._playout.clear()
            self._window.clear()
            # A job still in flight may be rendering in its thread (a worker renderer is not).
            if self._renderer is not None and (self._job is None or isinstance(self._renderer, WorkerFrameRenderer)):
                self._renderer.close()
            if self._owns_executor:
                self._executor.shutdown(wait=self._job is None)

    def _start(self) -> None:
        if self._task is None and not self._closed:
            if self._batcher is not None:
                self._batcher.join()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="emolive-session-clock")
            self._task.add_done_callback(self._on_loop_done)

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        """End the iterators with the loop's error when it stops without close()."""
        if self._batcher is not None:
            self._batcher.leave()
        if self._closed:
            return
        # A cancelled compute job (an executor shut down under us) cancels the loop too.
        error = RuntimeError("session frame loop was cancelled") if task.cancelled() else task.exception()
        log.error("session frame loop stopped", exc_info=error)
        self._frames_out.close(error)
        self._events_out.close(error)

    async def _run(self) -> None:
        """The clock: one tick per frame, frames emitted ``L`` ticks after their audio."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self._batcher is not None and self._options.realtime:
            start = self._batcher.align(start)  # tick with the batcher's other sessions
        for tick in itertools.count():
            deadline = start + tick / FPS
            if self._options.realtime:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
            else:
                await self._frames_out.drained()
            self._window.append(self._read_features(tick))
            if len(self._window) > self._lookahead:
                behind = self._options.realtime and self._behind(deadline, loop.time() - deadline)
                job_s = await self._emit(tick - self._lookahead, render=self._should_render(behind))
                # Compute as a queue fed on the clock: the job's latency (queue + run) from the
                # later of its deadline and the previous job's end, not from the loop's wake-up.
                self._compute_ready = max(self._compute_ready, deadline) + job_s

    def _read_features(self, tick: int) -> np.ndarray:
        """Feature frame ``tick``: (MELS_PER_FRAME, N_MELS)."""
        count = SAMPLES_PER_FRAME_IN + (FEATURE_SPILL if tick == 0 else 0)
        return self._mel.push(self._playout.read(count))

    def _behind(self, deadline: float, late: float) -> bool:
        """Whether the frame due at ``deadline`` (reached ``late`` s after it) drops its render."""
        return self._compute_ready - deadline > RENDER_SLACK_S or late > CATCH_UP_S

    def _should_render(self, late: bool) -> bool:
        # A frame that lands behind IMAGE_BACKLOG queued ones would lose its image anyway.
        return self._renderer is not None and not late and len(self._frames_out) < IMAGE_BACKLOG_FRAMES

    async def _emit(self, index: int, render: bool) -> float:
        """Compute frame ``index`` off the loop, then queue it with its voice and events;
        returns the compute job's latency in seconds (submit -> done, in the worker)."""
        submitted = time.perf_counter()
        features = np.stack(self._window)
        motion, motion_ms = None, 0.0
        if self._batcher is not None:
            motion = (await asyncio.wrap_future(self._batcher.submit(self._model, features)))[0]
            motion_ms = (time.perf_counter() - submitted) * 1000.0
        video = self._video
        if render and video is not None and video.keyframe:
            self._video = VideoRequest(video.bitrate)  # asked for once, with this frame
        remote = render and isinstance(self._renderer, WorkerFrameRenderer)
        rendered, compute_ms, finished = None, 0.0, time.perf_counter()
        if motion is None or (render and not remote):
            self._job = self._executor.submit(self._compute, features, index, render and not remote, video, motion)
            motion, rendered, compute_ms, finished = await asyncio.wrap_future(self._job)
            self._job = None
        if remote:
            # Sent and read on the loop: a worker thread in between would cost two more
            # waits for the interpreter lock, which the loop holds most of the time.
            started = time.perf_counter()
            rendered = await self._renderer.render_async(motion, index, video)
            finished = time.perf_counter()
            compute_ms += (finished - started) * 1000.0
        # The voice is taken after compute so that an interrupt meanwhile silences it.
        audio, speaking, events = self._playout.pop_frame()
        self.stats.last_compute_ms = motion_ms + compute_ms
        self.stats.frames_out += 1
        self.stats.frames_dropped += int(rendered is None and self._renderer is not None)
        frame = SessionFrame(index, index / FPS, None, audio, motion, speaking)
        if rendered is not None:
            frame.image, frame.packet, frame.keyframe = rendered.image, rendered.packet, rendered.keyframe
        self._queue_frame(frame)
        for event in events:
            self._events_out.put(SessionEvent(*event, frame_index=index))
        return finished - submitted

    def _queue_frame(self, frame: SessionFrame) -> None:
        self._frames_out.put(frame)
        self.stats.frames_discarded = self._frames_out.discarded
        stale = self._frames_out.newest(IMAGE_BACKLOG_FRAMES)
        if stale is not None and stale.image is not None:
            stale.image = None  # bounds the memory a slow consumer holds in images
            self.stats.frames_dropped += 1

    def _compute(self, features: np.ndarray, index: int, render: bool, video: VideoRequest | None,
                 motion: np.ndarray | None) -> tuple[np.ndarray, RenderedFrame | None, float, float]:
        """Runs in the executor: the motion of frame ``index`` (unless the batcher made it)
        and, if asked, its picture (and packet); the run time in ms and the perf_counter it
        finished at."""
        started = time.perf_counter()
        if motion is None:
            motion = self._model.step(features)[0]
        rendered = None
        if render and self._renderer is not None:
            rendered = self._renderer.render(motion, index, video)
        finished = time.perf_counter()
        return motion, rendered, (finished - started) * 1000.0, finished
