"""``emolive bench stream`` and ``emolive bench soak``: live sessions in real time.

A benchmark, never a test: absolute timings depend on the machine and on what else runs.

Load: every session is fed TTS speech (flite ``slt``; the bundled demo clip when flite is
missing) at 48 kHz, pushed in real time in 20 ms chunks, a pause between turns and
``end_of_turn`` after each.

Latency, measured per pushed chunk: wall time from the chunk's arrival (``push_audio``) to
the moment the first frame whose voice contains the chunk's first sample leaves the server.
Finding that frame is exact, not a model of the engine: a session outputs pushed 48 kHz
voice bit for bit (the 48 kHz stream is not resampled), with exact-zero samples where it
inserts silence (idle, underrun, padding), and the bench never pushes a zero sample (0 is
sent as 1, -90 dBFS). Walking the frames' audio and matching its non-zero samples against
the pushed ones gives, for every pushed sample, the frame that carries it; a mismatch is
counted and reported (it would mean audio was lost or reordered).

- ``--transport engine``: ``engine.session.Session`` objects in this process sharing one
  worker pool (as the server shares ``Settings.workers`` threads); "leaves" = yielded by
  ``Session.frames()``.
- ``--transport webrtc``: the real server (``BackgroundServer``, loopback ICE) in this
  process and N aiortc client peers + WebSockets in a child process (so the server's CPU is
  measurable apart). Arrival = the server calling ``push_audio`` (the bench wraps the
  session's bound method; no server code changes); the frame that carries a chunk is found
  by a recording sink added to the session (``LiveSession.add_sink``) that sees every
  frame the server's pump fans out. The client maps each received video frame to its
  frame index by pts (= index x 3600 on the 90 kHz clock) and timestamps it when
  ``track.recv()`` returns it. Both processes use CLOCK_MONOTONIC. Reported: "engine"
  latency (arrival -> the server's pump hands the frame to the WebRTC track), "sent"
  latency (arrival -> the track hands that frame, VP8-encoded, to aiortc's RTP sender, which
  packetizes and sends it at once: the frame leaves the server) and "client" latency
  (arrival -> the frame reaches the client: + RTP over loopback, aiortc's jitter buffer);
  "sent" and "client" take the first frame with that index or a later one.

  In a deployment the clients run elsewhere; here they share the server's two cores, at the
  same priority, so they take CPU the server would have. To keep that small the client
  decodes one video stream only: on the others, aiortc receives, decrypts, depacketizes and
  reassembles every frame as usual, and a stand-in for its VP8 decoder checks the frame
  header and counts the frame instead of decoding it (~0.85 ms per 512² frame). The decoded
  stream is the check that the pictures are right: every 25th decoded frame is compared with
  the server's render of the same index (PSNR). The server does exactly the work it does for
  a browser.

CPU per session: this process's CPU time (user + system) over the measurement window /
window / N, in % of one core. With webrtc the client process is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
from array import array
import concurrent.futures
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.motion.registry import LIVE_MOTION_MODEL

RATE = 48_000  # push rate: the session's voice-out rate, so voice out == voice in, bit for bit
CHUNK = RATE // 50  # 20 ms
FPS = 25
OUT_PER_FRAME = RATE // FPS
WARMUP_S = 2.0  # excluded from fps and CPU
TTS_VOICE = "flite:slt"
TEXTS = (
    "Hello, my name is emolive. I turn one portrait into a face that talks.",
    "Bob, my papa bought a big map of Panama.",
    "The quick brown fox jumps over the lazy dog, and then it sleeps for a while.",
    "Would you like to hear the weather for tomorrow morning?",
    "She sells sea shells by the sea shore.",
    "Thank you for waiting. Your order has shipped and should arrive on Friday.",
)


# ---------------------------------------------------------------------------------- speech


def speech_turns() -> tuple[list[np.ndarray], str]:
    """int16 turns at RATE with no zero sample, and where they came from."""
    turns: list[np.ndarray] = []
    source = ""
    try:
        from training.tts import available_voices, synthesize

        if TTS_VOICE in available_voices():
            turns = [synthesize(text, TTS_VOICE, rate=RATE).audio for text in TEXTS]
            source = f"TTS {TTS_VOICE}, {len(turns)} sentences"
    except Exception as error:  # a missing TTS engine is not the benchmark's problem
        print(f"TTS unavailable ({error}); using the bundled clip", file=sys.stderr)
    if not turns:
        import soxr

        from engine.audio import load_audio
        from engine.offline import DEFAULT_AUDIO

        clip = soxr.resample(load_audio(DEFAULT_AUDIO), 16000, RATE)
        piece = 3 * RATE
        turns = [clip[i : i + piece] for i in range(0, len(clip) - RATE, piece)]
        source = f"bundled demo_speech.wav in {len(turns)} pieces"
    out = []
    for audio in turns:
        pcm = np.clip(np.round(np.asarray(audio, np.float32) * 32767), -32768, 32767).astype(np.int16)
        pcm[pcm == 0] = 1  # zero is reserved for silence the session inserts
        out.append(pcm)
    return out, source


# ---------------------------------------------------------------------------- measurement


@dataclass
class Hit:
    """A pushed chunk and the frame that carries its first sample."""

    pushed_at: float
    first_in_turn: bool
    frame_index: int
    out_sample: int  # position of the chunk's first sample in the 48 kHz output stream
    left_at: float  # when that frame left (yield / server pump)


class AudioTracker:
    """Exact mapping of pushed samples to output frames; see the module docstring."""

    def __init__(self, keep_hits: bool = True) -> None:
        self._keep_hits = keep_hits  # False (soak): keep turn starts and latencies only, not every hit
        self.latencies_ms = array("d")
        self._pending: deque[np.ndarray] = deque()  # pushed, not yet seen in output
        self._pending_size = 0
        self._base = 0  # global position of the first pending sample
        self._pushed = 0
        self._chunks: deque[tuple[int, float, bool]] = deque()
        self._new_turn = True
        self.hits: list[Hit] = []
        self.mismatches = 0

    def pushed(self, samples: np.ndarray, at: float) -> None:
        samples = np.asarray(samples, np.int16).reshape(-1)
        self._chunks.append((self._pushed, at, self._new_turn))
        self._new_turn = False
        self._pending.append(samples)
        self._pending_size += len(samples)
        self._pushed += len(samples)

    def end_of_turn(self) -> None:
        self._new_turn = True

    def _take(self, n: int) -> np.ndarray:
        parts, need = [], n
        while need:
            head = self._pending[0]
            if len(head) <= need:
                parts.append(self._pending.popleft())
            else:
                parts.append(head[:need])
                self._pending[0] = head[need:]
            need -= len(parts[-1])
        self._pending_size -= n
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def frame(self, index: int, audio: np.ndarray, at: float) -> list[Hit]:
        audio = np.asarray(audio, np.int16).reshape(-1)
        nz = np.flatnonzero(audio)
        n = len(nz)
        if n == 0:
            return []
        if n > self._pending_size:
            self.mismatches += 1
            return []
        expected = self._take(n)
        if not np.array_equal(audio[nz], expected):
            self.mismatches += 1
        start, end = self._base, self._base + n
        self._base = end
        hits = []
        while self._chunks and self._chunks[0][0] < end:
            pos, pushed_at, first = self._chunks.popleft()
            offset = int(nz[max(0, pos - start)])
            hit = Hit(pushed_at, first, index, index * OUT_PER_FRAME + offset, at)
            hits.append(hit)
            self.latencies_ms.append(1000 * (at - pushed_at))
        self.hits.extend(hits if self._keep_hits else [h for h in hits if h.first_in_turn])
        return hits


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else math.nan


def cpu_seconds(pids: Iterable[int] = ()) -> float:
    """CPU time of this process and of ``pids`` (its render worker processes)."""
    t = os.times()
    total = t.user + t.system
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # a worker that exited: its time is lost, as a crash would lose it
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def rss_mb(pids: Iterable[int] = ()) -> float:
    """Resident memory of this process and of ``pids`` (its render worker processes)."""
    total = 0.0
    for pid in ("self", *pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
        except (OSError, StopIteration):
            return math.nan  # a process gone: no honest total
    return total


async def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


@dataclass
class Feeder:
    """Real-time turns: 20 ms chunks at absolute times, pauses between turns."""

    turns: list[np.ndarray]
    rng: np.random.Generator
    pause: tuple[float, float] = (0.4, 1.2)
    first_turn: int = 0

    async def run(self, start: float, end: float, push, end_turn, align=None) -> int:
        """Push turns from ``start`` until none fits before ``end``; returns turns pushed.
        ``align(t)`` may move each turn's start (the soak aligns turns to the clock)."""
        t, k = start, self.first_turn
        count = 0
        while True:
            turn = self.turns[k % len(self.turns)]
            k += 1
            if align is not None:
                t = align(t)
            if t + len(turn) / RATE > end:
                return count
            for j in range(0, len(turn), CHUNK):
                await sleep_until(t + j / RATE)
                push(turn[j : j + CHUNK])
            end_turn()
            count += 1
            t += len(turn) / RATE + float(self.rng.uniform(*self.pause))


@dataclass
class SessionResult:
    fps: float
    frames: int
    dropped: int
    lat_ms: list[float]
    turn_lat_ms: list[float]
    mismatches: int
    underruns: int = 0
    compute_ms: float = math.nan
    client_fps: float = math.nan
    client_lat_ms: list[float] = field(default_factory=list)
    lost: int = 0
    turns: int = 0
    transport_ms: list[float] = field(default_factory=list)  # webrtc: track -> RTP sender until received at the client
    sent_lat_ms: list[float] = field(default_factory=list)  # webrtc: arrival -> frame handed to the RTP sender


@dataclass
class RunResult:
    transport: str
    sessions: list[SessionResult]
    cpu_pct_per_session: float
    wall_s: float
    client_cpu_pct: float = math.nan
    loadavg: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def min_fps(self) -> float:
        return min(s.client_fps if self.transport == "webrtc" else s.fps for s in self.sessions)


# ---------------------------------------------------------------------------- engine transport


async def _engine_run(rig, n: int, seconds: float, workers: int, render_processes: int, turns, seed: int,
                      motion: str) -> RunResult:
    from engine.motion.registry import create_motion_model
    from engine.motion_space import MotionControls
    from engine.render_workers import RenderWorkers
    from engine.session import Session, SessionOptions, share_cores_between_sessions

    share_cores_between_sessions()  # as the server does
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bench-engine")
    render_workers = RenderWorkers(render_processes) if render_processes else None
    pids = render_workers.pids if render_workers else []
    sessions = [Session(rig, create_motion_model(motion), SessionOptions(controls=MotionControls(seed=seed + i)),
                        executor=executor, render_workers=render_workers) for i in range(n)]
    trackers = [AudioTracker() for _ in range(n)]
    t0 = time.monotonic()
    window = (t0 + WARMUP_S, t0 + WARMUP_S + seconds)
    per_session: list[dict] = [dict(images=0, frames=0, dropped=0, compute=[]) for _ in range(n)]
    marks: dict[str, float] = {}

    async def consume(i: int) -> None:
        session, tracker, acc = sessions[i], trackers[i], per_session[i]
        async for frame in session.frames():
            now = time.monotonic()
            tracker.frame(frame.index, frame.audio, now)
            if window[0] <= now < window[1]:
                acc["frames"] += 1
                acc["images"] += frame.image is not None
                acc["dropped"] += frame.image is None
                acc["compute"].append(session.stats.last_compute_ms)
            if now >= window[1] + 0.5:  # let the last turn's frames out
                return

    async def feed(i: int) -> int:
        session, tracker = sessions[i], trackers[i]

        def push(chunk):
            now = time.monotonic()
            session.push_audio(chunk, RATE)
            tracker.pushed(chunk, now)

        def end_turn():
            session.end_of_turn()
            tracker.end_of_turn()

        feeder = Feeder(turns, np.random.default_rng(seed + i), first_turn=i)
        start = t0 + 0.5 + float(np.random.default_rng(seed + 100 + i).uniform(0, 0.5))
        return await feeder.run(start, window[1] - 0.4, push, end_turn)

    async def mark_cpu() -> None:
        await sleep_until(window[0])
        marks["cpu0"], marks["t0"] = cpu_seconds(pids), time.monotonic()
        await sleep_until(window[1])
        marks["cpu1"], marks["t1"] = cpu_seconds(pids), time.monotonic()

    consumers = [asyncio.ensure_future(consume(i)) for i in range(n)]
    feeders = [asyncio.ensure_future(feed(i)) for i in range(n)]
    await asyncio.gather(mark_cpu(), *consumers)
    turn_counts = await asyncio.gather(*feeders)
    for session in sessions:
        await session.close()
    executor.shutdown(wait=True)
    if render_workers is not None:
        render_workers.close()
    wall = marks["t1"] - marks["t0"]
    results = []
    for i in range(n):
        acc, tracker, stats = per_session[i], trackers[i], sessions[i].stats
        hits = [h for h in tracker.hits if h.pushed_at >= t0]
        results.append(SessionResult(
            fps=acc["images"] / wall, frames=acc["frames"], dropped=acc["dropped"] + stats.frames_discarded,
            lat_ms=[1000 * (h.left_at - h.pushed_at) for h in hits],
            turn_lat_ms=[1000 * (h.left_at - h.pushed_at) for h in hits if h.first_in_turn],
            mismatches=tracker.mismatches, underruns=stats.underrun_frames,
            compute_ms=statistics.median(acc["compute"]) if acc["compute"] else math.nan, turns=turn_counts[i]))
    cpu = 100 * (marks["cpu1"] - marks["cpu0"]) / wall / n
    return RunResult("engine", results, cpu, wall, loadavg=_loadavg())


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---------------------------------------------------------------------------- webrtc transport


class _ServerRecorder:
    """Installed on the server's loop: records arrivals (wrapped push_audio) and frames (a sink)."""

    def __init__(self, live) -> None:
        self.tracker = AudioTracker()
        self.frames: list[tuple[int, bool]] = []  # (index, has image) in the window
        # Thumbnails of the frames the client thumbnails too: every THUMB_EVERY-th from the first
        # one sent, which is pts 0 at the client.
        self.thumbs: dict[int, np.ndarray] = {}
        self.live_id = live.id
        self.window = (math.inf, math.inf)
        engine = live.engine
        push, end_turn = engine.push_audio, engine.end_of_turn

        def push_audio(samples, sample_rate):
            now = time.monotonic()
            push(samples, sample_rate)
            if len(samples):
                self.tracker.pushed(samples, now)

        def end_of_turn():
            end_turn()
            self.tracker.end_of_turn()

        engine.push_audio, engine.end_of_turn = push_audio, end_of_turn
        self.engine = engine
        live.add_sink(self)

    def put_frame(self, frame) -> None:
        now = time.monotonic()
        self.tracker.frame(frame.index, frame.audio, now)
        if self.window[0] <= now < self.window[1]:
            self.frames.append((frame.index, frame.image is not None))
            sent = _SENT.get(self.live_id)
            if frame.image is not None and sent and (frame.index - sent[0][0]) % THUMB_EVERY == 0:
                self.thumbs[frame.index] = thumbnail(frame.image)


# live.id -> [(frame index, time)] of frames SessionVideoTrack.recv() handed to aiortc's sender
_SENT: dict[str, list[tuple[int, float]]] = {}
THUMB_EVERY = 25  # decoded frames compared with the server's render
THUMB = 64


def thumbnail(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-6))


def _patch_video_track() -> None:
    """Record, per session, the frames the video track gives the RTP sender (bench only).

    aiortc's receiver rebases pts so that the first packet it receives has pts 0, so a
    client's frame index is ``first index sent + pts / 3600``."""
    from server import webrtc

    if getattr(webrtc.SessionVideoTrack.recv, "_bench", False):
        return
    original = webrtc.SessionVideoTrack.recv

    async def recv(self):
        frame = await original(self)
        _SENT.setdefault(self._live.id, []).append((int(frame.pts) // 3600, time.monotonic()))
        return frame

    recv._bench = True  # type: ignore[attr-defined]
    webrtc.SessionVideoTrack.recv = recv


def _webrtc_run(n: int, seconds: float, workers: int, render_processes: int, size: int, seed: int,
                motion: str) -> RunResult:
    import multiprocessing

    import httpx

    from server.config import Settings
    from server.testing import BackgroundServer

    with tempfile.TemporaryDirectory(prefix="emolive-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), ice_loopback=True, workers=workers,
                            render_processes=render_processes, max_sessions=max(n, 1),
                            motion=motion, idle_timeout_s=120.0, detach_grace_s=2.0, peer_silence_s=5.0)
        _patch_video_track()
        _SENT.clear()
        with BackgroundServer(settings) as srv:
            created = []
            for i in range(n):
                r = httpx.post(f"{srv.url}/v1/sessions", json={"mode": "tts", "size": size, "motion": motion,
                                                                "seed": seed + i}, timeout=60)
                r.raise_for_status()
                created.append(r.json())

            async def install(session_id):
                return _ServerRecorder(srv.app.state.registry.get(session_id))

            recorders = [srv.call(install(s["session_id"])) for s in created]
            render_workers = srv.app.state.registry.render_workers
            pids = render_workers.pids if render_workers else []
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_main, args=(child, srv.url, srv.ws_url, created, seconds, seed),
                               daemon=True)
            proc.start()
            marks = {}
            result = None
            deadline = time.monotonic() + seconds + 180
            while True:
                while not parent.poll(0.5):
                    if not proc.is_alive() or time.monotonic() > deadline:
                        proc.kill()
                        raise RuntimeError(f"bench client process died or hung (exit code {proc.exitcode})")
                kind, value = parent.recv()
                if kind == "go":  # value = the window (start, end) on CLOCK_MONOTONIC
                    for rec in recorders:
                        srv.call(_set_window(rec, value))
                    time.sleep(max(0.0, value[0] - time.monotonic()))
                    marks["cpu0"], marks["t0"] = cpu_seconds(pids), time.monotonic()
                elif kind == "end":
                    marks["cpu1"], marks["t1"] = cpu_seconds(pids), time.monotonic()
                    codec = srv.call(_codec(srv.app.state.registry.get(created[0]["session_id"])))
                elif kind == "error":
                    raise RuntimeError(f"bench client failed:\n{value}")
                elif kind == "result":
                    result = value
                    break
            proc.join(30)
            infos = [httpx.get(f"{srv.url}/v1/sessions/{s['session_id']}",
                               headers={"Authorization": f"Bearer {s['token']}"}, timeout=10) for s in created]
            for s in created:
                httpx.delete(f"{srv.url}/v1/sessions/{s['session_id']}",
                             headers={"Authorization": f"Bearer {s['token']}"}, timeout=10)
    wall = marks["t1"] - marks["t0"]
    start, end = result["window"]
    sessions = []
    checks = []  # PSNR of decoded frames against the server's renders
    for i, rec in enumerate(recorders):
        client = result["sessions"][i]
        sent = _SENT.get(created[i]["session_id"], [])
        first_sent = sent[0][0] if sent else 0
        received = sorted((first_sent + pts_index, at) for pts_index, at in client["video"])  # (index, received_at)
        recv_index = np.array([r[0] for r in received], dtype=np.int64)
        recv_time = np.array([r[1] for r in received])
        in_window = (recv_time >= start) & (recv_time < end)
        hits = [h for h in rec.tracker.hits if start - WARMUP_S <= h.pushed_at]
        engine_lat = [1000 * (h.left_at - h.pushed_at) for h in hits]
        turn_lat = [1000 * (h.left_at - h.pushed_at) for h in hits if h.first_in_turn]
        sent_index = np.array([idx for idx, _ in sent], dtype=np.int64)
        client_lat, sent_lat = [], []
        for h in hits:
            k = np.searchsorted(recv_index, h.frame_index)
            if k < len(recv_index) and recv_index[k] - h.frame_index <= 2:
                client_lat.append(1000 * (recv_time[k] - h.pushed_at))
            k = np.searchsorted(sent_index, h.frame_index)
            if k < len(sent_index) and sent_index[k] - h.frame_index <= 2:
                sent_lat.append(1000 * (sent[k][1] - h.pushed_at))
        sent_at = dict(sent)
        for pts_index, thumb in client["thumbs"]:
            rendered_thumb = rec.thumbs.get(first_sent + pts_index)
            if rendered_thumb is not None:
                checks.append(psnr(np.asarray(thumb), rendered_thumb))
        transport_ms = [1000 * (at - sent_at[idx]) for idx, at in zip(recv_index.tolist(), recv_time.tolist())
                        if idx in sent_at]
        server_frames = rec.frames
        dropped_server = sum(1 for _, img in server_frames if not img)
        rendered = {idx for idx, img in server_frames if img}
        got = set(recv_index[in_window].tolist())
        lost = len({k for k in rendered if min(got, default=0) <= k <= max(got, default=-1)} - got)
        stats = infos[i].json().get("stats", {}) if infos[i].status_code == 200 else {}
        sessions.append(SessionResult(
            fps=sum(1 for _, img in server_frames if img) / (end - start), frames=len(server_frames),
            dropped=dropped_server, lat_ms=engine_lat, turn_lat_ms=turn_lat, mismatches=rec.tracker.mismatches,
            underruns=int(stats.get("underrun_frames", 0)),
            client_fps=int(in_window.sum()) / (end - start), client_lat_ms=client_lat, lost=lost,
            turns=client["turns"], transport_ms=transport_ms, sent_lat_ms=sent_lat))
    cpu = 100 * (marks["cpu1"] - marks["cpu0"]) / wall / n
    client_cpu = 100 * result["cpu"] / (end - start)
    notes = [f"server video: {codec}; 'fps' = frames with an image handed to the tracks, 'client fps' = whole "
             "frames received by the aiortc client (one stream decoded, the others counted undecoded); 'latency' = "
             "arrival -> server pump, 'sent' = arrival -> encoded frame handed to the RTP sender (leaves the "
             "server), 'client' = arrival -> received at the client (index from pts: aiortc rebases pts to the "
             "first packet received)",
             f"decoded-picture check: {len(checks)} decoded frames vs the server's renders, PSNR min "
             f"{_fmt(min(checks, default=math.nan))} / median {_fmt(statistics.median(checks) if checks else math.nan)} dB"
             + ("" if checks else " (no decoded frame matched: the check FAILED)")]
    return RunResult("webrtc", sessions, cpu, wall, client_cpu_pct=client_cpu, loadavg=_loadavg(), notes=notes)


async def _codec(live) -> str:
    """The server's video codec and who encodes it (aiortc, or the engine session)."""
    try:
        for sender in live.peer.getSenders():
            if sender.kind == "video" and sender.track is not None:
                codec = getattr(sender.track, "codec", "") or "?"
                return f"{codec}, encoded by " + ("the session" if codec == "video/vp8" else "aiortc")
    except Exception:
        pass
    return "?"


async def _set_window(rec: _ServerRecorder, window) -> None:
    rec.window = tuple(window)


def _client_main(conn, url: str, ws_url: str, sessions: list[dict], seconds: float, seed: int) -> None:
    """Child process: one aiortc peer + one WebSocket per session."""
    try:
        conn.send(("result", asyncio.run(_clients(conn, url, ws_url, sessions, seconds, seed))))
    except BaseException:
        import traceback

        conn.send(("error", traceback.format_exc()))


DECODED_STREAMS = 1  # client video streams decoded; the others are counted undecoded


@dataclass(frozen=True)
class CountedFrame:
    """A whole VP8 frame the bench client received but did not decode."""

    pts: int
    valid: bool  # the frame header parsed (and a keyframe names the expected size)


class CountingDecoder:
    """Stands in for aiortc's VP8 decoder in the bench client (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self._size = size

    def decode(self, encoded_frame) -> list[CountedFrame]:
        data = encoded_frame.data
        valid = len(data) >= 3
        if valid and not data[0] & 1:  # keyframe: start code, then 14-bit width and height
            valid = (len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a"
                     and int.from_bytes(data[6:8], "little") & 0x3FFF == self._size
                     and int.from_bytes(data[8:10], "little") & 0x3FFF == self._size)
        return [CountedFrame(encoded_frame.timestamp, valid)]


def _count_video_undecoded(size: int) -> None:
    """Give every VP8 stream after the first DECODED_STREAMS a CountingDecoder (this process only)."""
    import itertools

    import aiortc.rtcrtpreceiver as receiver

    real = receiver.get_decoder
    made = itertools.count()

    def get_decoder(codec):
        if codec.mimeType.lower() == "video/vp8" and next(made) >= DECODED_STREAMS:
            return CountingDecoder(size)
        return real(codec)

    receiver.get_decoder = get_decoder


async def _clients(conn, url: str, ws_url: str, sessions: list[dict], seconds: float, seed: int) -> dict:
    import av
    import httpx
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from websockets.asyncio.client import connect

    from server.webrtc import enable_loopback_candidates

    enable_loopback_candidates()
    _count_video_undecoded(sessions[0]["size"])
    turns, _ = speech_turns()
    peers, tasks, records = [], [], []

    async def read(track, rec) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "audio":
                rec["audio_samples"] += frame.samples
            elif isinstance(frame, av.VideoFrame):
                index = int(frame.pts) // 3600
                rec["video"].append((index, now))
                if index % THUMB_EVERY == 0:
                    rec["thumbs"].append((index, thumbnail(frame.to_ndarray(format="rgb24"))))
            elif frame.valid:
                rec["video"].append((int(frame.pts) // 3600, now))

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for s in sessions:
            pc = RTCPeerConnection()
            rec = {"video": [], "thumbs": [], "audio_samples": 0, "turns": 0, "events": []}
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")

            def on_track(track, rec=rec):
                tasks.append(asyncio.ensure_future(read(track, rec)))

            pc.on("track", on_track)
            await pc.setLocalDescription(await pc.createOffer())
            r = await http.post(f"/v1/sessions/{s['session_id']}/offer",
                                json={"sdp": pc.localDescription.sdp, "type": "offer"},
                                headers={"Authorization": f"Bearer {s['token']}"})
            r.raise_for_status()
            await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
            peers.append(pc)
            records.append(rec)
    sockets = []
    for s in sessions:
        ws = await connect(f"{ws_url}/v1/sessions/{s['session_id']}/ws?token={s['token']}", max_size=None)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "want": ["events"]}))
        sockets.append(ws)
    deadline = time.monotonic() + 30
    while not all(len(rec["video"]) >= 10 for rec in records):
        if time.monotonic() > deadline:
            raise RuntimeError(f"video did not flow: {[len(r['video']) for r in records]} frames")
        await asyncio.sleep(0.05)

    async def events(ws, rec) -> None:
        async for message in ws:
            if isinstance(message, str):
                rec["events"].append(json.loads(message))

    readers = [asyncio.ensure_future(events(ws, rec)) for ws, rec in zip(sockets, records)]
    feed_start = time.monotonic() + 0.3
    start = feed_start + WARMUP_S
    end = start + seconds
    conn.send(("go", (start, end)))
    cpu0 = cpu_seconds()

    async def feed(i: int) -> None:
        ws = sockets[i]
        feeder = Feeder(turns, np.random.default_rng(seed + i), first_turn=i)

        def push(chunk):
            asyncio.ensure_future(ws.send(chunk.tobytes()))

        def end_turn():
            asyncio.ensure_future(ws.send(json.dumps({"type": "end_of_turn"})))

        offset = float(np.random.default_rng(seed + 100 + i).uniform(0, 0.5))
        # Speech starts before the window, so the window sees turns in full swing.
        records[i]["turns"] = await feeder.run(feed_start + offset, end - 0.4, push, end_turn)

    await asyncio.gather(*(feed(i) for i in range(len(sessions))), sleep_until(end))
    cpu = cpu_seconds() - cpu0
    conn.send(("end", None))
    await asyncio.sleep(0.5)
    for r in readers:
        r.cancel()
    for ws in sockets:
        await ws.close()
    for pc in peers:
        await pc.close()
    for t in tasks:
        t.cancel()
    return {"window": (start, end), "cpu": cpu,
            "sessions": [{"video": rec["video"], "thumbs": rec["thumbs"], "turns": rec["turns"],
                          "audio_s": rec["audio_samples"] / RATE} for rec in records]}


# ---------------------------------------------------------------------------- reporting


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 170)


def _fmt(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _session_table(run: RunResult, size: int, seconds: float, motion: str):
    from rich.table import Table

    n = len(run.sessions)
    webrtc = run.transport == "webrtc"
    title = (f"emolive bench stream — {n} session{'s' if n > 1 else ''}, {size}², transport={run.transport}, "
             f"motion={motion}, {seconds:.0f} s window")
    table = Table(title=title, caption=f"CPU {run.cpu_pct_per_session:.0f}% of one core per session (server process)"
                  + (f"; client process {run.client_cpu_pct:.0f}% total" if webrtc else "")
                  + f"; load avg {run.loadavg}")
    table.add_column("session", justify="right")
    table.add_column("fps", justify="right")
    if webrtc:
        table.add_column("client fps", justify="right")
    table.add_column("dropped", justify="right")
    if webrtc:
        table.add_column("lost", justify="right")
    table.add_column("turns", justify="right")
    table.add_column("latency p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("turn start p50", justify="right")
    if webrtc:
        table.add_column("sent p50 ms", justify="right")
        table.add_column("sent p95 ms", justify="right")
        table.add_column("client p50 ms", justify="right")
        table.add_column("client p95 ms", justify="right")
        table.add_column("track→client ms", justify="right")
    table.add_column("underruns", justify="right")
    if not webrtc:
        table.add_column("compute ms", justify="right")
    table.add_column("sync errors", justify="right")
    for i, s in enumerate(run.sessions):
        row = [str(i + 1), _fmt(s.fps)]
        if webrtc:
            row.append(_fmt(s.client_fps))
        row.append(str(s.dropped))
        if webrtc:
            row.append(str(s.lost))
        row += [str(s.turns), _fmt(percentile(s.lat_ms, 50)), _fmt(percentile(s.lat_ms, 95)),
                _fmt(percentile(s.turn_lat_ms, 50))]
        if webrtc:
            row += [_fmt(percentile(s.sent_lat_ms, 50)), _fmt(percentile(s.sent_lat_ms, 95)),
                    _fmt(percentile(s.client_lat_ms, 50)), _fmt(percentile(s.client_lat_ms, 95)),
                    _fmt(percentile(s.transport_ms, 50))]
        row += [str(s.underruns)] + ([] if webrtc else [_fmt(s.compute_ms, 2)]) + [str(s.mismatches)]
        table.add_row(*row, style="red" if (s.client_fps if webrtc else s.fps) < 24 else None)
    all_lat = [x for s in run.sessions for x in s.lat_ms]
    all_turn = [x for s in run.sessions for x in s.turn_lat_ms]
    row = ["all", _fmt(statistics.median(s.fps for s in run.sessions))]
    if webrtc:
        row.append(_fmt(statistics.median(s.client_fps for s in run.sessions)))
    row.append(str(sum(s.dropped for s in run.sessions)))
    if webrtc:
        row.append(str(sum(s.lost for s in run.sessions)))
    row += [str(sum(s.turns for s in run.sessions)), _fmt(percentile(all_lat, 50)), _fmt(percentile(all_lat, 95)),
            _fmt(percentile(all_turn, 50))]
    if webrtc:
        all_sent = [x for s in run.sessions for x in s.sent_lat_ms]
        all_client = [x for s in run.sessions for x in s.client_lat_ms]
        row += [_fmt(percentile(all_sent, 50)), _fmt(percentile(all_sent, 95)),
                _fmt(percentile(all_client, 50)), _fmt(percentile(all_client, 95)),
                _fmt(percentile([x for s in run.sessions for x in s.transport_ms], 50))]
    row += [str(sum(s.underruns for s in run.sessions))]
    if not webrtc:
        row.append(_fmt(statistics.median(s.compute_ms for s in run.sessions), 2))
    row.append(str(sum(s.mismatches for s in run.sessions)))
    table.add_row(*row, style="bold", end_section=True)
    return table


def _prepare_rig(size: int):
    from engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar

    _, rig = prepare_avatar(DEFAULT_PORTRAIT, RenderOptions(size=size))
    return rig


def _one_run(args, n: int, turns, rig) -> RunResult:
    if args.transport == "engine":
        return asyncio.run(_engine_run(rig, n, args.seconds, args.workers, args.render_processes, turns, args.seed,
                                       args.motion))
    return _webrtc_run(n, args.seconds, args.workers, args.render_processes, args.size, args.seed, args.motion)


def bench_stream(args: argparse.Namespace) -> None:
    from rich.table import Table

    from cli.serve import check_render_processes
    from engine.errors import BadInputError

    if args.sessions < 1:
        raise BadInputError(f"--sessions must be at least 1, got {args.sessions}")
    check_render_processes(args.render_processes)
    if not 64 <= args.size <= 1024 or args.size % 2:
        raise BadInputError(f"--size must be an even number between 64 and 1024, got {args.size}")
    if args.seconds < 5:
        raise BadInputError(f"--seconds must be at least 5, got {args.seconds}")
    console = _console()
    turns, source = speech_turns()
    rig = _prepare_rig(args.size) if args.transport == "engine" else None
    console.print(f"speech: {source}, {sum(len(t) for t in turns) / RATE:.1f} s; pushed at {RATE} Hz in "
                  f"{1000 * CHUNK // RATE} ms chunks, pauses 0.4–1.2 s, end_of_turn after each turn; "
                  f"{args.workers} engine worker threads, {args.render_processes} render processes; "
                  f"{os.cpu_count()} CPUs", style="dim")
    if not args.sweep:
        run = _one_run(args, args.sessions, turns, rig)
        console.print(_session_table(run, args.size, args.seconds, args.motion))
        for note in run.notes:
            console.print(note, style="dim")
        return
    runs: list[RunResult] = []
    n = args.sessions if args.sessions > 1 else 1
    while n <= args.max_sessions:
        console.print(f"sweep: {n} session(s)…", style="dim")
        run = _one_run(args, n, turns, rig)
        runs.append(run)
        console.print(_session_table(run, args.size, args.seconds, args.motion))
        if run.min_fps < 24.0:
            break
        n += 1
    table = Table(title=f"emolive bench stream --sweep — {args.size}², transport={args.transport}, "
                        f"motion={args.motion}, {args.seconds:.0f} s per step")
    for column in ("sessions", "min fps", "median fps", "dropped", "latency p50 ms", "p95 ms", "CPU % / session",
                   "CPU % total", "compute ms", "load avg"):
        table.add_column(column, justify="right")
    for run in runs:
        fps = [s.client_fps if run.transport == "webrtc" else s.fps for s in run.sessions]
        lat = [x for s in run.sessions for x in s.lat_ms]
        table.add_row(str(len(run.sessions)), _fmt(min(fps)), _fmt(statistics.median(fps)),
                      str(sum(s.dropped for s in run.sessions)), _fmt(percentile(lat, 50)), _fmt(percentile(lat, 95)),
                      _fmt(run.cpu_pct_per_session, 0), _fmt(run.cpu_pct_per_session * len(run.sessions), 0),
                      _fmt(statistics.median(s.compute_ms for s in run.sessions), 2), run.loadavg,
                      style=None if min(fps) >= 24 else "red")
    console.print(table)
    good = [len(r.sessions) for r in runs if r.min_fps >= 24.0]
    if good:
        console.print(f"[bold]largest N with every session ≥ 24 fps at {args.size}²: {max(good)}[/bold]")
    else:
        console.print(f"[bold red]no N holds ≥ 24 fps at {args.size}² (from N={runs[0] and len(runs[0].sessions)})[/bold red]")
    if runs and runs[-1].min_fps >= 24.0:
        console.print(f"(stopped at --max-sessions {args.max_sessions})", style="dim")


# ---------------------------------------------------------------------------- soak


async def _soak(rig, minutes: float, turns, seed: int, motion: str, render_processes: int, on_sample) -> dict:
    from engine.motion.registry import create_motion_model
    from engine.motion_space import MotionControls
    from engine.render_workers import RenderWorkers
    from engine.session import Session, SessionOptions

    render_workers = RenderWorkers(render_processes) if render_processes else None
    pids = render_workers.pids if render_workers else []
    session = Session(rig, create_motion_model(motion), SessionOptions(controls=MotionControls(seed=seed)),
                      render_workers=render_workers)
    tracker = AudioTracker(keep_hits=False)  # the bench's own bookkeeping must not show up as RSS growth
    duration = 60.0 * minutes
    first_push: list[float] = []  # push time of each turn's first chunk, in turn order
    started: dict[int, int] = {}  # turn -> playback_started frame index
    samples: list[tuple[float, float]] = []  # (elapsed s, RSS MB)
    acc = dict(frames=0, images=0, compute=[], lag=[])
    t0 = time.monotonic()  # the clock starts with the first frames() call, just below
    frames = session.frames()
    first = asyncio.ensure_future(frames.__anext__())
    end = t0 + duration

    async def consume() -> None:
        frame = await first
        while True:
            now = time.monotonic()
            tracker.frame(frame.index, frame.audio, now)
            if now <= end:
                acc["frames"] += 1
                acc["images"] += frame.image is not None
            if frame.index % 25 == 0:
                acc["compute"].append(session.stats.last_compute_ms)
                acc["lag"].append((now - t0 - frame.index / FPS) * 1000)  # clock: yield vs. index
            if now > end + 1.0:
                return
            frame = await frames.__anext__()

    async def events() -> None:
        async for event in session.events():
            if event.type == "playback_started":
                started[event.turn] = event.frame_index

    def push(chunk):
        now = time.monotonic()
        if tracker._new_turn:
            first_push.append(now)
        session.push_audio(chunk, RATE)
        tracker.pushed(chunk, now)

    def end_turn():
        session.end_of_turn()
        tracker.end_of_turn()

    def align(t: float) -> float:
        """Start turns a quarter frame after a tick: 20 ms chunks then land 10 ms from every tick."""
        k = math.ceil((t - t0) * FPS)
        return t0 + (k + 0.25) / FPS

    async def sample_rss() -> None:
        while time.monotonic() < end:
            elapsed = time.monotonic() - t0
            samples.append((elapsed, rss_mb(pids)))
            on_sample(elapsed, samples[-1][1], len(first_push), tracker)
            await asyncio.sleep(10.0)
        samples.append((time.monotonic() - t0, rss_mb(pids)))

    feeder = Feeder(turns, np.random.default_rng(seed), pause=(1.0, 6.0))
    consumer, listener = asyncio.ensure_future(consume()), asyncio.ensure_future(events())
    cpu0 = cpu_seconds(pids)
    results = await asyncio.gather(feeder.run(t0 + 1.0, end - 1.0, push, end_turn, align=align), sample_rss(), consumer)
    cpu = cpu_seconds(pids) - cpu0
    stats = session.stats
    await session.close()
    listener.cancel()
    if render_workers is not None:
        render_workers.close()
    turn_hits = [h for h in tracker.hits if h.first_in_turn]
    offsets = []
    for turn, pushed_at in enumerate(first_push, start=1):
        if turn not in started:
            continue
        predicted = math.floor((pushed_at - t0) * FPS)  # the frame interval the first sample arrived in
        exact = turn_hits[turn - 1] if turn - 1 < len(turn_hits) else None
        offsets.append(dict(turn=turn, at=pushed_at - t0, frame_offset_ms=(started[turn] - predicted) * 1000 / FPS,
                            sample_offset_ms=(exact.out_sample / RATE - (pushed_at - t0)) * 1000 if exact else math.nan,
                            consistent=exact is not None and exact.frame_index == started[turn]))
    return dict(turns=results[0], offsets=offsets, samples=samples, stats=stats, tracker=tracker,
                fps=acc["images"] / duration, compute=acc["compute"], lag=acc["lag"], cpu=100 * cpu / duration)


def bench_soak(args: argparse.Namespace) -> None:
    from rich.table import Table

    from cli.serve import check_render_processes
    from engine.errors import BadInputError

    if not args.minutes > 0:
        raise BadInputError(f"--minutes must be positive, got {args.minutes}")
    check_render_processes(args.render_processes)
    console = _console()
    turns, source = speech_turns()
    rig = _prepare_rig(args.size)
    console.print(f"soak: 1 session, {args.size}², motion={args.motion}, {args.render_processes} render processes, "
                  f"{args.minutes:g} min; speech: {source}; idle gaps 1–6 s; RSS every 10 s", style="dim")

    def on_sample(elapsed, rss, turn_count, tracker):
        if not args.quiet:
            console.print(f"  t={elapsed:6.0f} s  RSS {rss:7.1f} MB  turns {turn_count:4d}  "
                          f"sync errors {tracker.mismatches}", style="dim", highlight=False)

    out = asyncio.run(_soak(rig, args.minutes, turns, args.seed, args.motion, args.render_processes, on_sample))
    samples, offsets = out["samples"], out["offsets"]
    baseline = samples[1][1] if len(samples) > 2 else samples[0][1]  # after the first 10 s (warm caches)
    final = samples[-1][1]
    growth = final - baseline
    minutes = (samples[-1][0] - samples[min(1, len(samples) - 1)][0]) / 60
    slope = np.polyfit([s[0] / 60 for s in samples[1:]], [s[1] for s in samples[1:]], 1)[0] if len(samples) > 3 else math.nan
    frame_offsets = [o["frame_offset_ms"] for o in offsets]
    sample_offsets = [o["sample_offset_ms"] for o in offsets if not math.isnan(o["sample_offset_ms"])]
    drift = max(abs(x - frame_offsets[0]) for x in frame_offsets) if frame_offsets else math.nan
    sample_drift = max(sample_offsets) - min(sample_offsets) if sample_offsets else math.nan
    lat = out["tracker"].latencies_ms
    stats = out["stats"]
    table = Table(title=f"emolive bench soak — {args.minutes:g} min, 1 session, {args.size}², motion={args.motion}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("RSS at 10 s / end / peak (MB)", f"{baseline:.1f} / {final:.1f} / {max(s[1] for s in samples):.1f}")
    table.add_row("RSS growth (MB)", f"{growth:+.1f}", style="bold" if growth < 50 else "bold red")
    table.add_row("RSS trend (MB / min, least squares)", _fmt(slope, 2))
    table.add_row("turns (with playback_started)", f"{out['turns']} ({len(offsets)})")
    table.add_row("A/V offset per turn, frame-level (ms): min / median / max",
                  f"{_fmt(min(frame_offsets, default=math.nan))} / {_fmt(statistics.median(frame_offsets) if frame_offsets else math.nan)} / "
                  f"{_fmt(max(frame_offsets, default=math.nan))}")
    table.add_row("max A/V offset drift vs. first turn (ms)", _fmt(drift), style="bold" if drift < 40 else "bold red")
    table.add_row("sample-exact offset spread (ms, incl. push jitter)", _fmt(sample_drift, 2))
    table.add_row("playback_started == frame carrying the first sample",
                  f"{sum(o['consistent'] for o in offsets)}/{len(offsets)}")
    table.add_row("sync errors (output voice != pushed voice)", str(out["tracker"].mismatches))
    table.add_row("latency p50 / p95 (ms)", f"{_fmt(percentile(lat, 50))} / {_fmt(percentile(lat, 95))}")
    table.add_row("clock lag, yield vs. index/25: first min / last min (ms, median)",
                  f"{_fmt(statistics.median(out['lag'][:60]))} / {_fmt(statistics.median(out['lag'][-60:]))}")
    table.add_row("fps (images)", _fmt(out["fps"], 2))
    table.add_row("frames out / dropped / discarded / underruns",
                  f"{stats.frames_out} / {stats.frames_dropped} / {stats.frames_discarded} / {stats.underrun_frames}")
    table.add_row("compute ms / frame (median)", _fmt(statistics.median(out["compute"]), 2))
    table.add_row("CPU (% of one core)", _fmt(out["cpu"], 0))
    table.add_row("load avg at end", _loadavg())
    console.print(table)
    failures = []
    if growth >= 50:
        failures.append(f"RSS grew {growth:.1f} MB (limit 50)")
    if not drift < 40:
        failures.append(f"A/V offset drifted {drift:.0f} ms (limit 40)")
    if out["tracker"].mismatches:
        failures.append(f"{out['tracker'].mismatches} frames whose voice differs from the pushed audio")
    if failures:
        console.print("[bold red]soak FAILED:[/bold red] " + "; ".join(failures))
        raise SystemExit(1)
    console.print(f"[bold green]soak passed[/bold green]: RSS {growth:+.1f} MB over {minutes:.1f} min, "
                  f"max drift {drift:.0f} ms")


# ---------------------------------------------------------------------------- CLI


def _motion_spec(text: str) -> str:
    from engine.motion.registry import parse_spec

    try:
        parse_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


MOTION_HELP = (f"motion model of the sessions: {LIVE_MOTION_MODEL} (default: what the server runs for sessions "
               "that name none), student, student:STEPS, teacher, teacher:STEPS")


def add_stream_parsers(bench_kinds) -> None:
    """``bench stream`` and ``bench soak`` under ``emolive bench``."""
    stream = bench_kinds.add_parser(
        "stream", help="concurrent live sessions: fps, dropped frames, latency, CPU per session",
        description="N live sessions on the bundled avatar, each fed TTS speech in real time (20 ms chunks, "
                    "pauses, end_of_turn). Reports per session the fps delivered, dropped frames, latency "
                    "(chunk arrival -> first frame carrying its first sample leaves the server; p50/p95) and "
                    "CPU per session. --sweep raises N from 1 until a session falls below 24 fps.",
    )
    stream.add_argument("--sessions", type=int, default=1, metavar="N", help="concurrent sessions (default: 1)")
    stream.add_argument("--size", type=int, default=512, help="frame size (default: 512)")
    stream.add_argument("--seconds", type=float, default=20.0, help="measurement window per run (default: 20)")
    stream.add_argument("--transport", choices=("engine", "webrtc"), default="engine",
                        help="engine: Session objects in-process; webrtc: the real server over loopback with "
                             "aiortc clients and WebSocket audio (default: engine)")
    stream.add_argument("--sweep", action="store_true", help="raise N from --sessions (1) until fps < 24")
    stream.add_argument("--max-sessions", type=int, default=16, help="sweep limit (default: 16)")
    stream.add_argument("--workers", type=int, default=2, help="engine worker threads (default: 2, the server's)")
    stream.add_argument("--render-processes", type=int, default=2, metavar="N",
                        help="processes that render (and, over WebRTC, VP8-encode) the frames; 0 renders in the "
                             "worker threads (default: 2, the server's)")
    stream.add_argument("--seed", type=int, default=0, help="seed for pauses and motion (default: 0)")
    stream.add_argument("--motion", type=_motion_spec, default=LIVE_MOTION_MODEL, metavar="MODEL", help=MOTION_HELP)

    soak = bench_kinds.add_parser(
        "soak", help="one session for minutes: RSS growth and A/V offset drift",
        description="One live session with speech turns and idle gaps for --minutes. Samples RSS every 10 s "
                    "and, per turn, the offset between the frame of playback_started and the frame the "
                    "turn's first sample arrived in. Exits 1 if RSS grows >= 50 MB or the offset drifts "
                    ">= 40 ms (or the voice out ever differs from the voice pushed).",
    )
    soak.add_argument("--minutes", type=float, default=10.0, help="duration (default: 10)")
    soak.add_argument("--size", type=int, default=512, help="frame size (default: 512)")
    soak.add_argument("--seed", type=int, default=0, help="seed for gaps and motion (default: 0)")
    soak.add_argument("--motion", type=_motion_spec, default=LIVE_MOTION_MODEL, metavar="MODEL", help=MOTION_HELP)
    soak.add_argument("--render-processes", type=int, default=2, metavar="N",
                      help="processes that render the frames (RSS and CPU include them); 0 renders in a thread "
                           "(default: 2, the server's)")
    soak.add_argument("--quiet", action="store_true", help="no progress lines")


def run_stream_bench(args: argparse.Namespace) -> None:
    if args.bench == "stream":
        bench_stream(args)
    elif args.bench == "soak":
        bench_soak(args)
