"""The voice-agent integrations with the real engine: the face over a remote server's WebSocket
(the voice comes back in sync with the pictures), LiveKit's ``AvatarRunner`` driving
``EmoliveVideoGenerator``, and ``EmoliveVideoService`` in a real Pipecat pipeline.

The LiveKit and Pipecat tests need the extras (``pip install 'emolive[livekit]'`` /
``'emolive[pipecat]'``), which need protobuf >= 5 while mediapipe declares < 5: they live in
``.venv-integrations`` (``scripts/install.sh`` makes it, layered on ``.venv``). Run from
``.venv`` (the README's test command), this file runs itself again there.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from emolive.integrations.face import FaceFrame, LocalFace, PlaybackEvent, RemoteFace
from emolive.server.config import Settings
from emolive.bench.background_server import BackgroundServer
from emolive.training.tts import synthesize

ROOT = Path(__file__).resolve().parents[1]
INTEGRATIONS_PYTHON = ROOT / ".venv-integrations" / "bin" / "python"
SIZE = 256  # the contract under test does not depend on the picture size; 256² renders 4x faster


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


needs_livekit = pytest.mark.skipif(not installed("livekit.agents"),
                                   reason="LiveKit Agents is not installed: scripts/install_integrations.sh (.venv-integrations)")
needs_pipecat = pytest.mark.skipif(not installed("pipecat"),
                                   reason="Pipecat is not installed: scripts/install_integrations.sh (.venv-integrations)")

SENTENCES = (
    "Bob, my papa bought a big map of Panama. Palm trees bob above the bay. "
    "Mom and Pam baked apple pie, and I am happy. Maybe a bumpy bus ride calms my mind. "
    "We will open the window before the meeting."
)


def tts_pcm(seconds: float | None = None, text: str = SENTENCES, rate: int = 24000) -> np.ndarray:
    """Flite speech as int16 at ``rate``, cut to ``seconds`` if given."""
    speech = synthesize(text, "flite:slt", rate=rate)
    pcm = np.clip(np.round(speech.audio * 32767.0), -32768, 32767).astype(np.int16)
    if seconds is not None:
        assert len(pcm) >= seconds * rate, "the test text is too short"
        pcm = pcm[: round(seconds * rate)]
    return pcm


def voice_offset_ms(sent: np.ndarray, rate: int, heard: np.ndarray) -> tuple[float, float]:
    """Where ``sent`` starts inside ``heard`` (48 kHz), in ms, and the normalised correlation there."""
    reference = soxr.resample(sent.astype(np.float32), rate, 48000)
    heard = heard.astype(np.float32)
    corr = np.correlate(heard, reference[: len(reference) // 2], mode="valid")
    lag = int(np.argmax(corr))
    a, b = heard[lag: lag + len(reference)], reference[: len(heard) - lag]
    n = min(len(a), len(b))
    return lag / 48.0, float(np.dot(a[:n], b[:n]) / (np.linalg.norm(a[:n]) * np.linalg.norm(b[:n]) + 1e-9))


# -- the face over a remote server ----------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("integrations") / "data", motion="baseline")
    with BackgroundServer(settings) as running:
        yield running


def test_remote_face_returns_pictures_and_the_voice_in_sync(server):
    """The WebSocket's ``audio`` stream: every frame's 40 ms of voice, paired with its picture,
    the voice being what was pushed (delayed, not altered), and turn events after their frame."""

    async def run() -> tuple[list[FaceFrame], list[PlaybackEvent], np.ndarray]:
        face = RemoteFace(server.url, size=SIZE, motion="baseline")
        await face.start()
        frames, events = [], []
        pcm = tts_pcm(3.0)

        async def consume() -> None:
            async for item in face.stream():
                (frames if isinstance(item, FaceFrame) else events).append(item)
                if isinstance(item, PlaybackEvent) and item.type == "playback_finished":
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        for start in range(0, len(pcm), 480):
            face.push_audio(pcm[start: start + 480], 24000)
        face.end_of_turn()
        await asyncio.wait_for(consumer, 15)
        await face.close()
        return frames, events, pcm

    frames, events, pcm = asyncio.run(run())
    indices = [f.index for f in frames]
    assert indices == list(range(indices[0], indices[0] + len(indices))), "a frame's voice went missing"
    assert all(len(f.audio) == 1920 for f in frames)
    assert sum(f.image is not None for f in frames) >= 0.9 * len(frames)
    assert frames[-1].image.shape == (SIZE, SIZE, 3)
    spoken = [f for f in frames if f.speaking]
    assert abs(len(spoken) - 75) <= 2, f"{len(spoken)} speaking frames for 3 s of voice"
    started, finished = events
    assert (started.type, finished.type, finished.interrupted) == ("playback_started", "playback_finished", False)
    assert spoken[0].index == started.frame_index
    assert finished.position_ms == pytest.approx(3000, abs=1)
    heard = np.concatenate([f.audio for f in frames])
    offset_ms, correlation = voice_offset_ms(pcm, 24000, heard)
    assert correlation > 0.98, "the voice came back altered"
    # The voice starts inside the first speaking frame.
    first = (spoken[0].index - frames[0].index) * 40
    assert first <= offset_ms < first + 40


def test_websocket_voice_comes_with_every_frame(server):
    """``want: ["jpeg", "audio"]`` at the protocol level: every frame's voice, in order, flagged
    ``speaking`` for exactly the turn's frames, each right after its picture."""
    from websockets.asyncio.client import connect

    async def run() -> list[dict]:
        session = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{server.url}/v1/sessions", data=json.dumps({"mode": "tts", "size": SIZE}).encode(),
            headers={"Content-Type": "application/json"}, method="POST"), timeout=30).read())
        url = f"{server.ws_url}/v1/sessions/{session['session_id']}/ws?token={session['token']}"
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 24000, "want": ["jpeg", "audio"]}))
            await ws.send(tts_pcm(2.0).tobytes())
            await ws.send(json.dumps({"type": "end_of_turn"}))
            headers = []
            while len([h for h in headers if h["type"] == "audio"]) < 100:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, str):
                    headers.append(json.loads(message))
                else:
                    assert len(message) == headers[-1]["bytes"]
            return headers

    headers = asyncio.run(run())
    audio = [h for h in headers if h["type"] == "audio"]
    assert [h["index"] for h in audio] == list(range(audio[0]["index"], audio[0]["index"] + len(audio)))
    assert all(h["sample_rate"] == 48000 and h["bytes"] == 3840 for h in audio)
    assert sum(h["speaking"] for h in audio) in (50, 51)  # 2 s of voice, starting inside a frame
    for at, header in enumerate(headers[:-1]):
        if header["type"] == "frame":
            assert headers[at + 1] == next(h for h in audio if h["index"] == header["index"])


# -- LiveKit ----------------------------------------------------------------------------------


class RunnerHarness:
    """LiveKit's own ``AvatarRunner`` + ``QueueAudioOutput`` around the generator, with the
    room left out: the tracks are not published (there is no LiveKit server here), but every
    frame goes through the runner's ``AVSynchronizer`` into real ``rtc`` sources, and the
    playback events are the ones the runner reports to the agent."""

    def __init__(self, face) -> None:
        from livekit import rtc
        from livekit.agents.voice.avatar import AvatarRunner, QueueAudioOutput

        from emolive.integrations.livekit import EmoliveVideoGenerator, avatar_options

        self.generator = EmoliveVideoGenerator(face)
        self.audio_out = QueueAudioOutput(sample_rate=24000)
        self.runner = AvatarRunner(rtc.Room(), audio_recv=self.audio_out, video_gen=self.generator,
                                   options=avatar_options(SIZE))
        self.pushed: list[tuple[float, object]] = []  # (perf_counter, frame) as the runner pushed it
        self.finished: list[tuple[float, object]] = []
        self.audio_out.on("playback_finished", lambda ev: self.finished.append((time.perf_counter(), ev)))

        async def publish() -> None:  # no room to publish to: mark the tracks published
            self.runner._video_publication = self.runner._audio_publication = object()

        push = self.runner.av_sync.push

        async def record(frame, timestamp=None) -> None:
            self.pushed.append((time.perf_counter(), frame))
            await push(frame, timestamp)

        self.runner._publish_track = publish
        self.runner.av_sync.push = record

    async def __aenter__(self) -> "RunnerHarness":
        await self.generator.start()
        await self.runner.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.aclose()
        await self.generator.aclose()

    async def say(self, pcm: np.ndarray, rate: int = 24000, end: bool = True) -> None:
        """What an agent's TTS does: 20 ms frames into the audio output, as fast as it makes them."""
        from livekit import rtc

        step = rate // 50
        for start in range(0, len(pcm), step):
            chunk = pcm[start: start + step]
            await self.audio_out.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk)))
        if end:
            self.audio_out.flush()

    def video(self, since: float = 0.0) -> list[tuple[float, object]]:
        from livekit import rtc

        return [(t, f) for t, f in self.pushed if isinstance(f, rtc.VideoFrame) and t >= since]

    def audio(self, since: float = 0.0) -> list[tuple[float, object]]:
        from livekit import rtc

        return [(t, f) for t, f in self.pushed if isinstance(f, rtc.AudioFrame) and t >= since]


def run_harness(body: Callable[[RunnerHarness], Awaitable[None]]) -> RunnerHarness:
    async def main() -> RunnerHarness:
        async with RunnerHarness(LocalFace(size=SIZE, motion="baseline")) as harness:
            await body(harness)
        return harness

    return asyncio.run(main())


def mouth(frame) -> np.ndarray:
    """The lower-middle of the picture (mouth and chin) as float, from an RGB24 VideoFrame."""
    image = np.frombuffer(frame.data, dtype=np.uint8).reshape(frame.height, frame.width, 3)
    return image[int(0.55 * SIZE): int(0.8 * SIZE), int(0.3 * SIZE): int(0.7 * SIZE)].astype(np.float32)


@needs_livekit
def test_livekit_generator_speaks_ten_seconds_in_250_frames():
    pcm = tts_pcm(10.0)

    async def body(h: RunnerHarness) -> None:
        await asyncio.sleep(0.6)  # idle first
        await h.say(pcm)
        for _ in range(200):
            if h.finished:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.6)  # idle after

    h = run_harness(body)
    audio = h.audio()
    assert abs(len(audio) - 250) <= 2, f"{len(audio)} voice frames for 10 s of TTS"
    first, last = audio[0][0], audio[-1][0]
    video_while_speaking = [t for t, _ in h.video() if first <= t <= last]
    assert abs(len(video_while_speaking) - 250) <= 2, f"{len(video_while_speaking)} video frames while speaking"
    assert all(f.sample_rate == 48000 and f.num_channels == 1 for _, f in audio)
    heard = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for _, f in audio])
    _, correlation = voice_offset_ms(pcm, 24000, heard)
    assert correlation > 0.98, "the voice the runner got is not the TTS audio"
    # Idle frames before and after the voice, at the face's 25 fps.
    before = [t for t, _ in h.video() if t < first]
    after = [t for t, _ in h.video() if t > last]
    assert len(before) >= 12 and len(after) >= 12
    (_, event), = h.finished
    assert not event.interrupted
    assert event.playback_position == pytest.approx(10.0, abs=0.05)
    span = h.video()[-1][0] - h.video()[0][0]
    assert (len(h.video()) - 1) / span == pytest.approx(25, rel=0.08)


@needs_livekit
def test_livekit_clear_buffer_mid_turn_reports_the_position_and_rests():
    pcm = tts_pcm(8.0)
    marks: dict[str, float] = {}

    async def body(h: RunnerHarness) -> None:
        await asyncio.sleep(0.4)
        await h.say(pcm, end=False)  # the agent is still speaking when the user barges in
        while len(h.audio()) < 75:  # 3 s of voice out
            await asyncio.sleep(0.01)
        marks["clear"] = time.perf_counter()
        h.audio_out.clear_buffer()
        await asyncio.sleep(2.0)  # silence: the face keeps coming, at rest

    h = run_harness(body)
    (_, event), = h.finished
    assert event.interrupted
    voiced = len(h.audio(0.0)) * 0.04
    assert event.playback_position == pytest.approx(voiced, abs=0.05)
    # Cleared once 3 s of frames were out; the voiced ones among them may be a frame or two fewer.
    assert 2.88 <= event.playback_position <= 3.3
    late_voice = h.audio(marks["clear"] + 0.2)
    assert not late_voice, f"{len(late_voice)} voice frames more than 200 ms after clear_buffer"
    after = h.video(marks["clear"])
    assert (len(after) - 1) / (after[-1][0] - after[0][0]) == pytest.approx(25, rel=0.08), "idle frames stopped"
    # Back to rest: the mouth settles (the last second changes far less than speech did).
    rest = [mouth(f) for t, f in after if t > marks["clear"] + 1.0]
    speech = [mouth(f) for _, f in h.video() if _ < marks["clear"]][-25:]
    moving = np.mean([np.abs(a - b).mean() for a, b in zip(speech, speech[1:])])
    resting = np.mean([np.abs(a - b).mean() for a, b in zip(rest, rest[1:])])
    assert resting < 0.35 * moving, f"mouth still moving at rest: {resting:.2f} vs {moving:.2f} while speaking"


# -- Pipecat -----------------------------------------------------------------------------------


@needs_pipecat
@pytest.mark.parametrize("mode", ["local", "remote"])
def test_pipecat_pipeline_faces_the_voice_and_stops_on_interruption(mode, request):
    """Scripted text -> local TTS -> EmoliveVideoService (engine in-process, or a remote
    server over its WebSocket API) -> a sink: pictures at 25 fps, each with its voice."""
    from pipecat.frames.frames import (
        EndFrame,
        InterruptionFrame,
        OutputAudioRawFrame,
        OutputImageRawFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from emolive.integrations.pipecat import EmoliveVideoService, FliteTTSService

    class Sink(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[float, object]] = []

        async def process_frame(self, frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            self.seen.append((time.perf_counter(), frame))
            await self.push_frame(frame, direction)

    reply = "Hello, I am the emolive face. I say what the bot says, and my lips move with my voice."
    marks: dict[str, float] = {}
    face_server = request.getfixturevalue("server").url if mode == "remote" else None

    async def main() -> Sink:
        sink = Sink()
        pipeline = Pipeline([FliteTTSService(), EmoliveVideoService(server=face_server, size=SIZE), sink])
        task = PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=48000))

        async def script() -> None:
            # From the face's first frame: its start (avatar, render processes) takes its time.
            while not any(isinstance(f, OutputImageRawFrame) for _, f in sink.seen):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.8)
            await task.queue_frame(TTSSpeakFrame("Short reply."))
            await asyncio.sleep(2.6)
            marks["reply"] = time.perf_counter()
            await task.queue_frame(TTSSpeakFrame(reply))
            await asyncio.sleep(2.5)
            marks["interrupt"] = time.perf_counter()
            await task.queue_frame(InterruptionFrame())
            await asyncio.sleep(1.0)
            await task.queue_frame(EndFrame())

        scripted = asyncio.create_task(script())
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()
        await scripted
        return sink

    sink = asyncio.run(main())
    images = [(t, f) for t, f in sink.seen if isinstance(f, OutputImageRawFrame)]
    voice = [(t, f) for t, f in sink.seen if isinstance(f, OutputAudioRawFrame)]
    span = images[-1][0] - images[0][0]
    assert (len(images) - 1) / span == pytest.approx(25, rel=0.08)
    assert images[0][1].size == (SIZE, SIZE) and images[0][1].format == "RGB"
    assert len(voice) == len(images), "every picture comes with its 40 ms of voice"
    assert all(f.sample_rate == 48000 and len(f.audio) == 3840 for _, f in voice)
    # The first reply plays out whole, then its TTSStoppedFrame passes (not before its voice).
    first_turn = [t for t, f in voice if isinstance(f, TTSAudioRawFrame) and t < marks["reply"]]
    stops = [t for t, f in sink.seen if isinstance(f, TTSStoppedFrame)]
    assert len(first_turn) >= 15 and stops and first_turn[-1] <= stops[0] < marks["reply"]
    # The interrupted reply: voice stops within 200 ms, and its TTSStoppedFrame never comes.
    spoken = [t for t, f in voice if isinstance(f, TTSAudioRawFrame) and t > marks["reply"]]
    assert spoken and spoken[0] < marks["interrupt"]
    assert max(spoken) - marks["interrupt"] < 0.2, "the face kept speaking after the interruption"
    assert len(stops) == 1
    silent = [f for t, f in voice if t > marks["interrupt"] + 0.2]
    assert silent and not any(np.frombuffer(f.audio, dtype=np.int16).any() for f in silent)


# -- the Pipecat example bot in Chromium ----------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
BOT = Path(__file__).parents[1] / "examples" / "pipecat_bot.py"
USER_SPEAKS_AT_S = 6.0  # into the microphone file: mid-greeting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@needs_pipecat
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
def test_pipecat_bot_in_chromium(tmp_path):
    """The example bot end to end: Chromium talks to it over SmallWebRTC with a microphone
    file in which the user barges in mid-greeting; the page gets the face at 25 fps, the mouth
    moves with the voice, and the voice and face stop when the user speaks."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import chromium_args

    user = synthesize("Wait, wait. Stop please, I have a question.", "flite:slt", rate=48000).audio
    mic = np.concatenate([np.zeros(int(USER_SPEAKS_AT_S * 48000), np.float32), user,
                          np.zeros(12 * 48000, np.float32)])
    wav = tmp_path / "mic.wav"
    sf.write(wav, mic, 48000, subtype="PCM_16")
    port = free_port()
    bot = subprocess.Popen([sys.executable, str(BOT), "--port", str(port), "--size", str(SIZE)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert bot.poll() is None and time.monotonic() < deadline, "the bot did not start"
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(wav))
            page = browser.new_page()
            page.goto(url)
            page.click("#talk")
            page.wait_for_function("window.emolive.connected", timeout=30000)
            page.wait_for_timeout(int((USER_SPEAKS_AT_S + 9) * 1000))
            stats = page.evaluate("window.emolive")
            browser.close()
        timeline = json.load(urllib.request.urlopen(f"{url}/api/timeline", timeout=5))
    finally:
        bot.terminate()
        output, _ = bot.communicate(timeout=20)
    frames, voice = stats["frames"], stats["voice"]
    assert frames, f"no video at the page; bot output:\n{output[-3000:]}"
    # 25 fps at the page, from the first frame on.
    presented = frames[-1]["presented"] - frames[0]["presented"]
    fps = presented / ((frames[-1]["t"] - frames[0]["t"]) / 1000)
    assert fps >= 24, f"{fps:.1f} fps at the page"
    interruptions = [e["t"] * 1000 for e in timeline if e["event"] == "interruption"]
    replies = [e["t"] * 1000 for e in timeline if e["event"] == "speak"]
    assert interruptions and len(replies) >= 2, timeline
    cut = interruptions[0]
    voiced = [v["t"] for v in voice if v["rms"] > 0.02]
    greeting = [t for t in voiced if t < cut]
    assert greeting, "the greeting was not heard"
    # The voice stops within 200 ms of the interruption (up to the next reply).
    late = [t for t in voiced if cut + 200 < t < replies[1]]
    last_voice = max([t for t in voiced if cut <= t < replies[1]], default=cut)
    # The face's own share: when its first silent frame left it, before the transport's share.
    face_silent = min((e["t"] * 1000 for e in timeline if e["event"] == "face_silent" and e["t"] * 1000 >= cut),
                      default=float("nan"))
    assert not late, (f"the voice went on {last_voice - cut:.0f} ms after the interruption (the face went silent "
                      f"after {face_silent - cut:.0f} ms; Chromium's audio jitter buffer held {stats['audioDelayMs']:.0f} ms)")
    # The mouth moves with the voice, and rests when it stops.
    def motion(start: float, end: float) -> float:
        values = [f["motion"] for f in frames if start <= f["t"] < end]
        return float(np.mean(values)) if values else float("nan")

    speaking = motion(greeting[0] + 500, cut)
    resting = motion(cut + 600, replies[1])
    assert resting < 0.4 * speaking, f"mouth motion {resting:.2f} after the interruption vs {speaking:.2f} speaking"
    reply_voice = [t for t in voiced if t > replies[1]]
    assert reply_voice, "the reply was not heard"
    assert motion(reply_voice[0] + 200, reply_voice[-1]) > 2 * resting, "the mouth did not move with the reply"
    onset = next((m["t"] for m in stats["mic"] if m["rms"] > 0.02), float("nan"))
    print(f"page: {fps:.1f} fps; voice stopped {last_voice - cut:.0f} ms after the interruption (the face's "
          f"share {face_silent - cut:.0f} ms, Chromium's audio jitter buffer {stats['audioDelayMs']:.0f} ms), "
          f"{last_voice - onset:.0f} ms after the user started speaking (VAD included); mouth motion "
          f"{speaking:.2f} speaking, {resting:.2f} at rest")


@pytest.mark.skipif(installed("pipecat") and installed("livekit.agents"),
                    reason="the extras are installed in this interpreter: the tests above ran here")
def test_the_integrations_pass_in_their_own_environment() -> None:
    if not INTEGRATIONS_PYTHON.exists():
        pytest.fail(f"{INTEGRATIONS_PYTHON} is missing: scripts/install.sh (or scripts/install_integrations.sh) makes it")
    proc = subprocess.run([str(INTEGRATIONS_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "not own_environment"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    report = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, report
    assert " passed" in report and "skipped" not in report.splitlines()[-1], report
