"""The streaming session: streaming == offline, voice out in sync, turns, interrupt, pacing.

Exact semantics run with ``realtime=False`` (the loop waits for the consumer, so nothing is
timing dependent); pacing and slow consumers run on the real clock with loose bounds.
Async tests drive their own loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import numpy as np
import pytest
import soxr
from scipy.signal import correlate

from emolive.engine.audio import MELS_PER_FRAME, SAMPLE_RATE, StreamingLogMel, to_mono_16k
from emolive.engine.errors import BadInputError
from emolive.engine.motion.registry import create_motion_model
from emolive.engine.motion_space import FPS, INDEX
from emolive.engine.offline import DEFAULT_PORTRAIT, RenderOptions, audio_to_motion, prepare_avatar
from emolive.engine.formats import FEATURE_SAMPLES_PER_FRAME, VOICE_RATE, VOICE_SAMPLES_PER_FRAME
from emolive.engine.session import FEATURE_SPILL, Session
from emolive.engine.session_types import SessionEvent, SessionFrame, SessionOptions

TEXT = "Bob, my papa bought a big map of Panama. Palm trees bob above the bay."
RATE = 22050
JAW = INDEX["jawOpen"]


@pytest.fixture(scope="module")
def rig():
    return prepare_avatar(DEFAULT_PORTRAIT, RenderOptions(size=256))[1]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 4.7 s of flite slt speech at 22.05 kHz, float32."""
    from emolive.training.tts import available_voices, synthesize

    if "flite:slt" not in available_voices():
        pytest.skip("flite slt is not installed")
    return synthesize(TEXT, "flite:slt", rate=RATE).audio


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    """Run ``coro`` as the only task of a fresh loop, failing it after ``timeout`` s."""

    async def guarded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(guarded())


def session(rig, **options: Any) -> Session:
    return Session(rig, create_motion_model("baseline"), SessionOptions(**options))


def push_in_random_chunks(s: Session, samples: np.ndarray, rate: int, seed: int = 0) -> None:
    """Push with chunk sizes from 1 sample up, as a network would deliver them."""
    rng = np.random.default_rng(seed)
    begin = 0
    while begin < len(samples):
        size = int(rng.choice([1, 7, 160, 441, 1000, 3999]))
        s.push_audio(samples[begin : begin + size], rate)
        begin += size


async def take(frames: AsyncIterator[SessionFrame], count: int) -> list[SessionFrame]:
    return [await anext(frames) for _ in range(count)]


def collect_events(s: Session) -> tuple[list[SessionEvent], asyncio.Task[None]]:
    """Events gathered by a task that ends when the session closes."""
    events: list[SessionEvent] = []

    async def gather() -> None:
        async for event in s.events():
            events.append(event)

    return events, asyncio.create_task(gather())


def voice(frames: list[SessionFrame]) -> np.ndarray:
    return np.concatenate([f.audio for f in frames]).astype(np.float64) / 32768.0


def to_48k(samples: np.ndarray) -> np.ndarray:
    return soxr.resample(samples.astype(np.float64), RATE, VOICE_RATE, quality="HQ")


def snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    return 10.0 * np.log10(np.sum(reference**2) / np.sum((actual - reference) ** 2))


def longest_zero_run(samples: np.ndarray) -> tuple[int, int]:
    """Start and end of the longest run of exact zeros."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], samples == 0, [0])).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest])


def test_feature_spill_completes_a_video_frame() -> None:
    stream = StreamingLogMel()
    assert len(stream.push(np.zeros(FEATURE_SAMPLES_PER_FRAME + FEATURE_SPILL))) == MELS_PER_FRAME
    assert len(stream.push(np.zeros(FEATURE_SAMPLES_PER_FRAME))) == MELS_PER_FRAME


def test_streamed_motion_equals_offline(rig, speech: np.ndarray) -> None:
    expected = audio_to_motion(to_mono_16k(speech, RATE), RenderOptions(motion="baseline")).frames

    async def main() -> list[SessionFrame]:
        s = session(rig, realtime=False)
        push_in_random_chunks(s, speech, RATE)
        s.end_of_turn()
        frames = await take(s.frames(), len(expected) + 10)
        await s.close()
        return frames

    frames = run(main())
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.timestamp == f.index / FPS for f in frames)
    assert all(f.image is not None and f.image.shape == (256, 256, 3) for f in frames)
    motion = np.stack([f.motion for f in frames[: len(expected)]])
    np.testing.assert_allclose(motion, expected, atol=1e-4)


def test_voice_out_is_the_input_at_48k_with_silence_around(rig, speech: np.ndarray) -> None:
    pcm = np.round(speech * 32767).astype(np.int16)
    stereo = np.stack([pcm, pcm], axis=1)
    expected = to_48k(pcm / 32768.0)

    async def main() -> tuple[list[SessionFrame], list[SessionEvent]]:
        s = session(rig, realtime=False, render_video=False)
        events, gatherer = collect_events(s)
        frames_in = s.frames()
        frames = await take(frames_in, 10)
        push_in_random_chunks(s, stereo, RATE, seed=1)
        s.end_of_turn()
        while not any(e.type == "playback_finished" for e in events):
            frames.append(await anext(frames_in))
        frames += await take(frames_in, 10)
        await s.close()
        await gatherer
        return frames, events

    frames, events = run(main())
    out = voice(frames)
    offset = int(np.argmax(correlate(out, expected, mode="valid", method="fft")))
    assert offset >= 10 * VOICE_SAMPLES_PER_FRAME
    assert not out[:offset].any() and not out[offset + len(expected) :].any()
    assert snr_db(expected, out[offset : offset + len(expected)]) > 40.0

    speaking = [f.index for f in frames if f.speaking]
    assert speaking == list(range(speaking[0], speaking[-1] + 1))
    assert speaking[0] == offset // VOICE_SAMPLES_PER_FRAME
    started, finished = events
    assert (started.type, started.turn, started.frame_index) == ("playback_started", 1, speaking[0])
    assert (finished.type, finished.turn, finished.interrupted) == ("playback_finished", 1, False)
    assert finished.frame_index == speaking[-1]
    assert abs(finished.position_ms - 1000 * len(speech) / RATE) <= 40


def test_underrun_inserts_silence_without_ending_the_turn(rig, speech: np.ndarray) -> None:
    half = len(speech) // 2

    async def main() -> tuple[list[SessionFrame], list[SessionEvent], int]:
        s = session(rig, realtime=False, render_video=False)
        events, gatherer = collect_events(s)
        frames_in = s.frames()
        s.push_audio(speech[:half], RATE)
        frames = await take(frames_in, round(half / RATE * FPS) + 25)  # runs dry for ~1 s
        s.push_audio(speech[half:], RATE)
        s.end_of_turn()
        frames += await take(frames_in, round((len(speech) - half) / RATE * FPS) + 10)
        await s.close()
        await gatherer
        return frames, events, s.stats.underrun_frames

    frames, events, underruns = run(main())
    assert [f.index for f in frames] == list(range(len(frames)))
    assert underruns >= 20
    # One turn is one resampler stream: the voice is its output with a gap where it ran dry.
    out, expected = voice(frames), to_48k(speech)
    dry_from, dry_to = longest_zero_run(out)
    assert dry_to - dry_from > 0.8 * VOICE_RATE
    assert snr_db(expected[:dry_from], out[:dry_from]) > 40.0
    rest = expected[dry_from:]
    assert snr_db(rest, out[dry_to : dry_to + len(rest)]) > 40.0
    assert [(e.type, e.turn, e.interrupted) for e in events] == [
        ("playback_started", 1, False),
        ("playback_finished", 1, False),
    ]
    assert abs(events[1].position_ms - 1000 * len(speech) / RATE) <= 40


def test_interrupt_stops_voice_and_relaxes_the_face_smoothly(rig, speech: np.ndarray) -> None:
    async def main() -> tuple[list[SessionFrame], int, list[SessionEvent]]:
        s = session(rig, realtime=False, render_video=False)
        events, gatherer = collect_events(s)
        s.push_audio(speech, RATE)
        frames_in = s.frames()
        frames = await take(frames_in, 25)
        while frames[-1].motion[JAW] < 0.3:  # interrupt with the mouth well open
            frames.append(await anext(frames_in))
        interrupted_at = frames[-1].index
        s.interrupt()
        frames += await take(frames_in, 15)
        s.push_audio(speech[:RATE], RATE)  # the next push starts turn 2
        frames += await take(frames_in, 5)
        await s.close()
        await gatherer
        return frames, interrupted_at, events

    frames, at, events = run(main())
    finished = next(e for e in events if e.type == "playback_finished")
    assert (finished.turn, finished.interrupted) == (1, True)
    assert at < finished.frame_index <= at + 5
    spoken_ms = 1000 * sum(f.speaking for f in frames[: at + 1]) / FPS
    assert abs(finished.position_ms - spoken_ms) <= 40

    after = frames[at + 1 : at + 16]
    assert not any(f.speaking or f.audio.any() for f in after)
    jaw = np.array([f.motion[JAW] for f in frames])
    assert np.all(jaw[at + 5 : at + 16] < 0.1)
    assert np.max(np.abs(np.diff(jaw[at - 5 : at + 16]))) <= 0.35
    assert [(e.type, e.turn) for e in events][-1] == ("playback_started", 2)


def test_idle_face_blinks_with_mouth_closed(rig) -> None:
    async def main() -> tuple[list[SessionFrame], list[SessionEvent]]:
        s = session(rig, realtime=False, render_video=False)
        events, gatherer = collect_events(s)
        frames = await take(s.frames(), 6 * FPS)
        await s.close()
        await gatherer
        return frames, events

    frames, events = run(main())
    motion = np.stack([f.motion for f in frames])
    assert motion[:, JAW].max() < 0.05
    assert motion[:, INDEX["eyeBlinkLeft"]].max() > 0.5
    assert motion[:, INDEX["headYaw"]].std() > 0
    assert not any(f.speaking or f.audio.any() for f in frames)
    assert all(f.audio.shape == (VOICE_SAMPLES_PER_FRAME,) and f.audio.dtype == np.int16 for f in frames)
    assert events == []


def test_bad_pushes_are_refused(rig) -> None:
    s = session(rig, max_pending_seconds=1.0, render_video=False)
    s.push_audio(np.zeros(SAMPLE_RATE // 2, np.int16), SAMPLE_RATE)
    with pytest.raises(BadInputError, match="pending"):
        s.push_audio(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(BadInputError):
        s.push_audio(np.array([0.0, np.nan], np.float32), SAMPLE_RATE)
    with pytest.raises(BadInputError):
        s.push_audio(np.zeros((2, 2, 2), np.float32), SAMPLE_RATE)
    with pytest.raises(BadInputError):
        s.push_audio(np.zeros(10, np.float32), 0)
    run(s.close())
    with pytest.raises(RuntimeError):
        s.push_audio(np.zeros(10, np.float32), SAMPLE_RATE)


def test_realtime_clock_paces_frames_at_25_fps(rig) -> None:
    async def main() -> list[SessionFrame]:
        s = session(rig)
        frames = []
        start = time.monotonic()
        async for frame in s.frames():
            if time.monotonic() - start > 2.0:
                break
            frames.append(frame)
        await s.close()
        return frames

    frames = run(main())
    assert 48 <= len(frames) <= 52
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.timestamp == f.index / FPS for f in frames)


def test_slow_consumer_loses_images_never_voice(rig, speech: np.ndarray) -> None:
    clip = speech[: 2 * RATE]

    async def main() -> tuple[list[SessionFrame], int]:
        s = session(rig)
        s.push_audio(clip, RATE)
        s.end_of_turn()
        frames_in = s.frames()
        frames = []
        for _ in range(15):
            frames.append(await anext(frames_in))
            await asyncio.sleep(0.1)
        while frames[-1].index < 2.5 * FPS:  # catch up, past the end of the turn
            frames.append(await anext(frames_in))
        await s.close()
        return frames, s.stats.frames_dropped

    frames, dropped = run(main())
    assert [f.index for f in frames] == list(range(len(frames)))
    assert dropped > 0 and any(f.image is None for f in frames)
    assert frames[-1].image is not None  # caught up: images are back
    expected = to_48k(clip)
    assert snr_db(expected, voice(frames)[: len(expected)]) > 40.0


def test_close_ends_iterators_and_leaves_no_tasks_or_threads(rig) -> None:
    def session_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("emolive-session")]

    async def main() -> None:
        s = session(rig)
        consumer = asyncio.create_task(take(s.frames(), 10**9))
        _, gatherer = collect_events(s)
        await asyncio.sleep(0.2)
        assert session_threads()
        await s.close()
        await s.close()  # idempotent
        await asyncio.wait_for(gatherer, 1.0)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(consumer, 1.0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

        shared = concurrent.futures.ThreadPoolExecutor(1)
        s = Session(rig, create_motion_model("baseline"), SessionOptions(), executor=shared)
        await take(s.frames(), 3)
        await s.close()
        assert shared.submit(lambda: 1).result() == 1  # not ours to shut down
        shared.shutdown()

    run(main())
    assert session_threads() == []


def test_a_failing_model_ends_frames_with_its_error(rig) -> None:
    model = create_motion_model("baseline")

    def broken_step(features: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    model.step = broken_step

    async def main() -> None:
        s = Session(rig, model, SessionOptions(realtime=False))
        with pytest.raises(ValueError, match="exploded"):
            await take(s.frames(), 5)
        await s.close()

    run(main())


@pytest.fixture(scope="module")
def render_workers():
    from emolive.engine.render_workers import RenderWorkers

    workers = RenderWorkers(2)
    yield workers
    workers.close()


def decode_vp8(frames: list[SessionFrame]) -> list[np.ndarray]:
    import av

    decoder = av.CodecContext.create("libvpx", "r")
    return [f.to_ndarray(format="rgb24") for frame in frames for f in decoder.decode(av.Packet(frame.packet))]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float32) - b) ** 2)))


def test_render_workers_give_the_same_frames_and_vp8_that_decodes_to_them(rig, speech, render_workers) -> None:
    """A session rendering in worker processes emits the pictures and packets a session
    rendering in its own thread does; VP8 starts with a keyframe and gives one on request."""

    async def stream(workers) -> list[SessionFrame]:
        s = Session(rig, create_motion_model("baseline"), SessionOptions(realtime=False), render_workers=workers)
        s.push_audio(speech[: RATE * 2], RATE)
        s.end_of_turn()
        frames = []
        async for frame in s.frames():
            if frame.index == 4:
                s.encode_video(400_000)
            if frame.index == 20:
                s.request_keyframe()
            frames.append(frame)
            if len(frames) == 40:
                break
        await s.close()
        return frames

    here, there = run(stream(None)), run(stream(render_workers))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(here, there))
    assert [f.packet for f in here] == [f.packet for f in there]
    # Packets from the first frame rendered after encode_video on; keyframes where asked.
    assert [f.packet is not None for f in there] == [i > 4 for i in range(40)]
    encoded = [f for f in there if f.packet is not None]
    assert [f.index for f in encoded if f.keyframe] == [5, 21]
    decoded = decode_vp8(encoded)
    assert len(decoded) == len(encoded)
    assert min(psnr(f.image, image) for f, image in zip(encoded, decoded)) > 30
    assert render_workers.stream_count == 0  # closed sessions gave theirs back


def test_a_killed_render_worker_is_replaced_and_its_sessions_go_on(rig, render_workers) -> None:
    """SIGKILL the worker of one of two live sessions, then the workers of both: both
    sessions keep rendering (re-opened on the spare and its replacements) after a short
    pause, and no frame loop fails."""
    import os
    import signal

    async def rendering_again(stream) -> None:
        """Frames until half a second of them in a row has pictures."""
        run_length = 0
        async for frame in stream:
            run_length = run_length + 1 if frame.image is not None else 0
            if run_length == FPS // 2:
                return
        raise AssertionError("frames ended")

    async def main() -> None:
        sessions = [Session(rig, create_motion_model("baseline"), SessionOptions(realtime=True),
                            render_workers=render_workers) for _ in range(2)]
        streams = [s.frames() for s in sessions]
        for stream in streams:
            await take(stream, 3)
        for serving in (sessions[:1], sessions):
            kill = {s.route.worker.worker_pid for s in serving}
            for pid in kill:
                os.kill(pid, signal.SIGKILL)
            await asyncio.gather(*(rendering_again(stream) for stream in streams))
            assert set(render_workers.pids).isdisjoint(kill)
        assert sum(s.route.worker.reopened for s in sessions) >= 3
        for s in sessions:
            await s.close()

    run(main(), timeout=60)
    assert render_workers.stream_count == 0


def test_the_render_transport_reads_whole_messages_in_any_blocking_mode() -> None:
    """uvloop leaves a socket it watched non-blocking; a reply that arrives in pieces must
    still be read whole (it used to surface as a dead worker), on either event loop."""
    import socket

    import uvloop

    from emolive.engine.render_workers import Channel

    message = ("render", np.arange(30_000, dtype=np.float32), 7, None)
    data = Channel.encode(message)

    async def main() -> None:
        ours, theirs = socket.socketpair()
        channel = Channel(ours)
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), lambda: None)  # what uvloop's readers do to the descriptor
        loop.remove_reader(ours.fileno())

        async def dribble() -> None:
            for start in range(0, len(data), 4093):
                theirs.sendall(data[start : start + 4093])
                await asyncio.sleep(0)

        writer = asyncio.ensure_future(dribble())
        op, payload, index, video = await channel.recv_async()
        await writer
        assert (op, index, video) == ("render", 7, None) and np.array_equal(payload, message[1])
        await channel.send_async(Channel.encode(("reply", None)))
        assert Channel(theirs).recv() == ("reply", None)  # the worker's blocking side
        ours.close(), theirs.close()

    run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 48000])
def test_a_turn_starts_inside_a_read_as_soon_as_holdback_allows_and_never_runs_dry(rate: int) -> None:
    """One frame of audio per read, pushed in uneven pieces: the turn starts in the read where
    what is pushed first exceeds what the resamplers may hold back (plus the margin), after
    silence inside that read, and from there the reader never meets a missing sample."""
    from emolive.engine.playout import TURN_START_MARGIN, Playout, max_holdback
    from emolive.engine.session_types import SessionStats

    rng = np.random.default_rng(rate)
    per_read = rate // FPS
    t = np.arange(120 * per_read) / rate
    audio = (0.5 + 0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # never zero
    playout = Playout(SessionStats())
    reads = []
    for k in range(120):
        frame = audio[k * per_read : (k + 1) * per_read]
        for piece in np.split(frame, np.sort(rng.integers(0, per_read, 2))):
            playout.push(piece, rate)
        reads.append(playout.read(FEATURE_SAMPLES_PER_FRAME))
    out = np.concatenate(reads)
    first = int(np.flatnonzero(out)[0])
    assert (out[first:] != 0).all()
    # Pushes keep pace with reads, so the voice lags its input by exactly that much.
    assert first == max_holdback(rate) + TURN_START_MARGIN
    assert first % FEATURE_SAMPLES_PER_FRAME != 0  # inside a read, not at a frame boundary


def test_underruns_widen_the_start_margin_and_clean_reads_narrow_it() -> None:
    from emolive.engine.playout import MARGIN_DECAY, TURN_START_MARGIN, Playout, max_holdback
    from emolive.engine.session_types import SessionStats

    rate, n = 48000, 48000 // FPS
    audio = (0.5 + 0.3 * np.sin(np.arange(60 * n) * 0.05)).astype(np.float32)  # never zero
    stats = SessionStats()
    playout = Playout(stats)
    for k in range(10):  # a turn in real time ...
        playout.push(audio[k * n : (k + 1) * n], rate)
        playout.read(FEATURE_SAMPLES_PER_FRAME)
    stalled = np.concatenate([playout.read(FEATURE_SAMPLES_PER_FRAME) for _ in range(2)])  # ... whose source stalls
    filled = int(np.sum(stalled == 0))
    assert stats.underrun_frames > 0 and filled > 0
    assert TURN_START_MARGIN + filled - MARGIN_DECAY <= playout.margin <= TURN_START_MARGIN + filled
    playout.push(audio[10 * n : 11 * n], rate)
    playout.end_turn()
    for _ in range(20):
        playout.read(FEATURE_SAMPLES_PER_FRAME)
    margin = playout.margin
    assert margin < TURN_START_MARGIN + filled  # given back while the voice runs clean
    reads = []
    for k in range(20, 40):  # the next turn starts with the wider margin in hand
        playout.push(audio[k * n : (k + 1) * n], rate)
        reads.append(playout.read(FEATURE_SAMPLES_PER_FRAME))
    assert int(np.flatnonzero(np.concatenate(reads))[0]) == max_holdback(rate) + margin


@pytest.mark.parametrize("rate", [16000, 24000])
def test_real_time_pushes_play_without_gaps(rig, speech: np.ndarray, rate: int) -> None:
    """20 ms chunks pushed at exactly real time: the turn's voice is its input at 48 kHz,
    with no silence inserted at its start (resampler holdback) or inside it."""
    clip = soxr.resample(speech[: 3 * RATE].astype(np.float64), RATE, rate, quality="HQ")
    clip = (clip + 0.01).astype(np.float32)  # a DC offset: the voice itself has no zero runs
    chunk = rate // 50

    async def main() -> tuple[list[SessionFrame], list[SessionEvent], int]:
        s = session(rig, render_video=False)
        events, gatherer = collect_events(s)
        frames_in = s.frames()
        frames = await take(frames_in, 3)

        async def feed() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n, begin in enumerate(range(0, len(clip), chunk)):
                await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
                s.push_audio(clip[begin : begin + chunk], rate)
            s.end_of_turn()

        feeder = asyncio.create_task(feed())
        while not any(e.type == "playback_finished" for e in events):
            frames.append(await anext(frames_in))
        frames += await take(frames_in, 3)
        await feeder
        await s.close()
        await gatherer
        return frames, events, s.stats.underrun_frames

    frames, events, underruns = run(main())
    assert underruns == 0
    out = voice(frames)
    expected = soxr.resample(clip.astype(np.float64), rate, VOICE_RATE, quality="HQ")
    offset = int(np.argmax(correlate(out, expected, mode="valid", method="fft")))
    turn = out[offset : offset + len(expected)]
    assert snr_db(expected, turn) > 40.0
    start, end = longest_zero_run(turn)
    assert end - start <= VOICE_RATE // 1000  # no gap longer than 1 ms inside the turn
    speaking = [f.index for f in frames if f.speaking]
    assert speaking == list(range(speaking[0], speaking[-1] + 1))
    assert speaking[0] == offset // VOICE_SAMPLES_PER_FRAME
