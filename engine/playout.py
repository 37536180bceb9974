"""A live session's audio timeline: turns of pushed voice, resampled on demand into aligned
16 kHz (features) and 48 kHz (voice out) streams, read one frame at a time.

Each turn is resampled twice, to 16 kHz and 48 kHz, by its own soxr streams, and the two are
aligned by position: 16 kHz turn sample ``s`` is 48 kHz samples ``3s .. 3s + 2``, and the
reader only takes samples both streams have produced. Resampling is lazy (a few pieces per
tick), so pushing a minute of audio at once does not block the event loop. soxr holds back
part of each stream until more input or end_of_turn arrives, and how much swings from one
push to the next; the most a rate's streams can hold back is measured once per rate
(:func:`max_holdback`): 20 ms for 48 kHz input (the features' low-quality filter), 22 ms for
44.1 kHz, 36–38 ms for 16 and 24 kHz (the voice's high-quality one), 172 ms for 8 kHz. A turn that
has not ended starts as soon as the reader can take its audio with that much, plus a margin
for late pushes, still to come, and it may start anywhere inside a tick's read, after
silence: a source pushing at least in real time then never runs the reader dry, the voice of
a turn has no inserted gaps, and no turn waits for a frame boundary. The margin adapts like
a jitter buffer: 10 ms to begin with, grown by what each underrun had to fill in (a source or
network late by more than that), given back slowly while the voice runs clean.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import deque
from typing import NamedTuple

import numpy as np
import soxr

from emolive.engine.audio import FEATURE_RESAMPLE_QUALITY
from emolive.engine.formats import FEATURE_RATE, VOICE_RATE, VOICE_SAMPLES_PER_FRAME
from emolive.engine.session_types import SessionStats

OUT_PER_IN = VOICE_RATE // FEATURE_RATE
# 16 kHz samples a starting turn keeps in hand beyond the most its resamplers can hold back,
# for pushes that come late (network, event loop): at least this, at most MAX_...; an underrun
# adds the samples it had to fill in, and each tick without one takes back MARGIN_DECAY.
TURN_START_MARGIN = FEATURE_RATE // 100
MAX_TURN_START_MARGIN = 8 * TURN_START_MARGIN
MARGIN_DECAY = 1  # 25 samples (1.6 ms) a second: from MAX_TURN_START_MARGIN back to the least in 45 s
RESAMPLE_PIECE_S = 0.1  # pushed audio is resampled in pieces this long, as the reader needs it


class SampleFifo:
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


class TurnResampler:
    """One input rate -> the 16 kHz feature stream and the 48 kHz voice stream."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        # Features: the filter of engine.audio.to_mono_16k, so they match the offline path exactly.
        # The voice users hear keeps the high-quality filter.
        self._streams = [
            None if rate == out else soxr.ResampleStream(rate, out, 1, dtype="float32", quality=quality)
            for out, quality in ((FEATURE_RATE, FEATURE_RESAMPLE_QUALITY), (VOICE_RATE, "HQ"))
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
    resampler = TurnResampler(rate)
    pieces = np.random.default_rng(0).integers(1, rate // 25 + 1, size=200)
    pushed = out16 = out48 = 0
    worst = 0.0
    for size in pieces:
        samples16, samples48 = resampler.process(np.zeros(size, dtype=np.float32))
        pushed, out16, out48 = pushed + size, out16 + len(samples16), out48 + len(samples48)
        ideal16 = pushed * FEATURE_RATE / rate
        worst = max(worst, ideal16 - out16, ideal16 - out48 / OUT_PER_IN)
    return math.ceil(worst)


class Turn:
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
        self._resampler: TurnResampler | None = None
        self._flushed = False
        self._in16 = SampleFifo()
        self._in48 = SampleFifo()

    @property
    def pending_seconds(self) -> float:
        return self.raw_seconds + self._in16.size / FEATURE_RATE

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
        self.pushed16 += len(samples) * FEATURE_RATE / rate
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
        self._in16, self._in48 = SampleFifo(), SampleFifo()
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
            self._resampler = TurnResampler(rate)
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


class PlayoutEvent(NamedTuple):
    type: str
    turn: int
    position_ms: int
    interrupted: bool


class Playout:
    """The session's audio timeline: turns in order, the feature reader, the voice out."""

    def __init__(self, stats: SessionStats) -> None:
        self._stats = stats
        self._turns: deque[Turn] = deque()  # not yet finished, oldest first
        self._open: Turn | None = None  # the turn push() appends to
        self._turn_ids = itertools.count(1)
        self._interrupted: list[Turn] = []  # awaiting their playback_finished
        self.margin = TURN_START_MARGIN  # what a starting turn keeps in hand for late pushes
        # 48 kHz voice read with the features but not yet output, tagged with its turn.
        self._voice: deque[tuple[Turn | None, np.ndarray]] = deque()

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
            self._open = Turn(next(self._turn_ids))
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

    def pop_frame(self) -> tuple[np.ndarray, bool, list[PlayoutEvent]]:
        """The next frame's voice (int16), whether it carries turn audio, and turn events."""
        parts, events, speaking = [], [], False
        needed = VOICE_SAMPLES_PER_FRAME
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
                    events.append(PlayoutEvent("playback_started", turn.id, 0, False))
        events.extend(self._finish_turns())
        audio = np.clip(np.round(np.concatenate(parts) * 32768.0), -32768, 32767).astype(np.int16)
        return audio, speaking, events

    def clear(self) -> None:
        """Release all audio (close)."""
        self._turns.clear()
        self._interrupted.clear()
        self._voice.clear()
        self._open = None

    def _finish_turns(self) -> list[PlayoutEvent]:
        events = [self._finished(turn, interrupted=True) for turn in self._interrupted]
        self._interrupted.clear()
        while self._turns and self._turns[0].done:
            events.append(self._finished(self._turns.popleft(), interrupted=False))
            self._stats.turns_finished += 1
        return events

    @staticmethod
    def _finished(turn: Turn, interrupted: bool) -> PlayoutEvent:
        position_ms = round(turn.output48 * 1000 / VOICE_RATE)
        return PlayoutEvent("playback_finished", turn.id, position_ms, interrupted)
