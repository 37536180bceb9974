"""``emolive bench sessions``: sessions created, streamed and dropped for an hour against the
real ``emolive serve`` subprocess. A benchmark, never a test (the smoke test runs it for 18 s).

Up to ``--concurrency`` sessions at once, one after another, of these kinds in turn:

- ``ws``: WebSocket only, ``want`` events + motion, ``video: false`` (a 3D-avatar client);
  speech turns pushed in real time, then a clean close (close frame) and ``DELETE``.
- ``webrtc``: an aiortc peer on 127.0.0.1 receiving video + audio, speech in over the
  WebSocket; then ``pc.close()``, close frame, ``DELETE``.
- ``drop-ws``: as ``ws``, then the TCP socket is aborted mid-turn: no close frame, no ``DELETE``.
- ``drop-peer``: as ``webrtc``, then mid-turn the socket is aborted and the peer's UDP sockets
  are closed under it: no DTLS close, no RTCP BYE (a browser tab that vanished).
- ``stall``: as ``ws``, then the client stops reading and sending with its socket open (a
  hung client process): only the server's keepalive can tell.

Speech: flite TTS turns at 48 kHz in 20 ms chunks (``cli.stream_bench.speech_turns``). Received
fps: whole VP8 frames per second at the aiortc client (checked, not decoded: the client shares
the server's CPUs), or motion rows per second on the WebSocket. After an abrupt end the bench
polls ``GET /v1/sessions/{id}`` until it says ``ended`` and reports how long the server took to
reap it.

Every minute (every tenth of the run when shorter than 10 min) it samples the server process
tree: RSS of the server and of its children (render workers), the server's open fds, and the
gauges of /metrics (``emolive_asyncio_tasks`` and ``emolive_session_tasks`` where the server
has them). At the end, with no session left, it samples once more.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cli.bench_server import ProcessSample, ServerProcess, log_errors, write_figures
from cli.stream_bench import CHUNK, RATE, CountingDecoder, Feeder, _console, _fmt, sleep_until, speech_turns

KINDS = ("ws", "webrtc", "drop-ws", "drop-peer", "stall")
SIZE = 512
FIRST_FRAME_TIMEOUT_S = 20.0
REAP_LIMIT_S = 75.0  # past the server's WebSocket keepalive (uvicorn: ping every 20 s, 20 s to answer)
RSS_LIMIT_MB = 50.0
FD_SLACK = 8  # descriptors the server may open lazily on first use (model files, executor wake-up pipes)
TASK_GAUGES = ("emolive_asyncio_tasks", "emolive_session_tasks")


@dataclass
class SessionRecord:
    """What one session did, as the client saw it."""

    kind: str
    started_at: float  # seconds into the run
    session_id: str = ""
    seconds: float = 0.0  # streaming time planned
    turns: int = 0
    fps: float = math.nan  # video frames (webrtc) or motion rows (ws) per second received
    audio_s: float = 0.0  # voice received over WebRTC
    events: int = 0  # playback_started + playback_finished
    reap_s: float = math.nan  # abrupt kinds: end -> the server reports the session ended
    reap_cut: bool = False  # the run ended before the server reaped it (not counted as a failure)
    error: str = ""
    server_error: str = ""  # what the server logged about this session, when it logged an error

    @property
    def failed(self) -> bool:
        return bool(self.error or self.server_error)


@dataclass
class ChurnResult:
    samples: list[ProcessSample] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    idle_start: ProcessSample | None = None
    idle_end: ProcessSample | None = None
    server_exit: int | None = None
    server_died: bool = False
    log_errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- clients


class _Severed:
    """Stands in for a peer's UDP transport after the network under it went away."""

    def __init__(self, transport) -> None:
        transport.abort()

    def sendto(self, *_args, **_kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _sever_peer(pc) -> None:
    """Close the peer's UDP sockets without telling anyone (aioice keeps them in ``_protocols``)."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        for protocol in getattr(dtls.transport._connection, "_protocols", []):
            if not isinstance(protocol.transport, _Severed):
                protocol.transport = _Severed(protocol.transport)


class _Client:
    """One session: HTTP, WebSocket and (for the WebRTC kinds) an aiortc peer."""

    def __init__(self, http, server: ServerProcess, kind: str, record: SessionRecord) -> None:
        self.http, self.server, self.kind, self.record = http, server, kind, record
        self.webrtc = kind in ("webrtc", "drop-peer")
        self.session: dict = {}
        self.ws = None
        self.pc = None
        self.frames: list[float] = []  # arrival times of video frames or motion rows
        self.closed_by_server = ""
        self.tasks: list[asyncio.Task] = []

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.session['token']}"}

    async def open(self, seed: int) -> None:
        from websockets.asyncio.client import connect

        body = {"mode": "tts", "size": SIZE, "seed": seed, "video": self.webrtc}
        r = await self.http.post("/v1/sessions", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"POST /v1/sessions: {r.status_code} {r.text[:200]}")
        self.session = r.json()
        self.record.session_id = self.session["session_id"]
        if self.webrtc:
            await self._connect_peer()
        # No client keepalive: a hung client process sends no pings either.
        self.ws = await connect(f"{self.server.ws_url}/v1/sessions/{self.session['session_id']}/ws"
                                f"?token={self.session['token']}", max_size=None, ping_interval=None)
        want = ["events"] if self.webrtc else ["events", "motion"]
        await self.ws.send(json.dumps({"type": "start", "sample_rate": RATE, "want": want}))
        self.tasks.append(asyncio.ensure_future(self._read_ws()))

    async def _connect_peer(self) -> None:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        self.pc = pc
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        pc.on("track", lambda track: self.tasks.append(asyncio.ensure_future(self._read_track(track))))
        await pc.setLocalDescription(await pc.createOffer())
        r = await self.http.post(f"/v1/sessions/{self.session['session_id']}/offer",
                                 json={"sdp": pc.localDescription.sdp, "type": "offer"}, headers=self.auth)
        if r.status_code != 200:
            raise RuntimeError(f"POST offer: {r.status_code} {r.text[:200]}")
        await pc.setRemoteDescription(RTCSessionDescription(**r.json()))

    async def _read_track(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "audio":
                self.record.audio_s += frame.samples / frame.sample_rate
            elif getattr(frame, "valid", True):
                self.frames.append(time.monotonic())

    async def _read_ws(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    continue
                data = json.loads(message)
                kind = data.get("type")
                if kind == "motion" and not self.webrtc:
                    self.frames.append(time.monotonic())
                elif kind in ("playback_started", "playback_finished"):
                    self.record.events += 1
                elif kind == "closed":
                    self.closed_by_server = data.get("reason", "?")
                elif kind == "error":
                    self.record.error = self.record.error or f"server error message: {data.get('message')}"
        except ConnectionClosed:
            pass

    async def stream(self, seconds: float, rng: np.random.Generator, turns) -> float:
        """Whole turns for ``seconds`` once the flow has started; returns when it started."""
        start = await self._wait_flow()
        ws = self.ws

        def push(chunk: np.ndarray) -> None:
            asyncio.ensure_future(ws.send(chunk.tobytes()))

        def end_turn() -> None:
            asyncio.ensure_future(ws.send(json.dumps({"type": "end_of_turn"})))

        feeder = Feeder(turns, rng, first_turn=int(rng.integers(len(turns))))
        self.record.turns = await feeder.run(start, start + seconds, push, end_turn)
        await sleep_until(start + seconds)
        return start

    async def stream_part(self, seconds: float, rng: np.random.Generator, turns) -> float:
        """Speech for ``seconds`` once the flow has started, stopping mid-turn (the abrupt kinds)."""
        start = await self._wait_flow()
        turn = turns[int(rng.integers(len(turns)))]
        k = 0
        while time.monotonic() < start + seconds:
            await sleep_until(start + k * CHUNK / RATE)
            piece = turn[(k * CHUNK) % len(turn):][:CHUNK]
            await self.ws.send(piece.tobytes())
            k += 1
        self.record.turns = 1
        return start

    async def _wait_flow(self) -> float:
        deadline = time.monotonic() + FIRST_FRAME_TIMEOUT_S
        while not self.frames:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {'video frame' if self.webrtc else 'motion row'} in "
                                   f"{FIRST_FRAME_TIMEOUT_S:.0f} s")
            if self.closed_by_server:
                raise RuntimeError(f"server closed the session: {self.closed_by_server}")
            await asyncio.sleep(0.05)
        return time.monotonic()

    def measure_fps(self, start: float, end: float) -> None:
        # The first second after the flow starts is left out: the jitter buffer fills.
        window = [t for t in self.frames if start + 1.0 <= t < end]
        if end - start > 2.0:
            self.record.fps = len(window) / (end - start - 1.0)

    async def close_cleanly(self) -> None:
        if self.closed_by_server:
            raise RuntimeError(f"server closed the session mid-stream: {self.closed_by_server}")
        await self.ws.send(json.dumps({"type": "end_of_turn"}))
        await self.ws.close()
        if self.pc is not None:
            await self.pc.close()
        r = await self.http.delete(f"/v1/sessions/{self.session['session_id']}", headers=self.auth)
        if r.status_code not in (204, 404):  # 404: the last client leaving closed it already
            raise RuntimeError(f"DELETE: {r.status_code} {r.text[:200]}")

    def drop(self) -> None:
        """Vanish: socket aborted (no close frame); the peer's packets stop; stalled: just stop."""
        if self.kind == "stall":
            for task in self.tasks:
                task.cancel()
            self.ws.transport.pause_reading()
            return
        self.ws.transport.abort()
        if self.pc is not None:
            _sever_peer(self.pc)
            for task in self.tasks:
                task.cancel()

    async def wait_reaped(self, limit: float) -> float:
        """Seconds until the server has closed the session (its GET says ``ended``; 404 once it
        is forgotten), or NaN past ``limit``."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            r = await self.http.get(f"/v1/sessions/{self.session['session_id']}", headers=self.auth)
            if r.status_code == 404 or (r.status_code == 200 and r.json().get("state") == "ended"):
                return time.monotonic() - t0
            await asyncio.sleep(0.25)
        return math.nan

    async def dispose(self) -> None:
        """Free the bench's side of whatever is left (the server's side is the server's job)."""
        for task in self.tasks:
            task.cancel()
        if self.ws is not None:
            self.ws.transport.abort()
        if self.pc is not None:
            try:
                await asyncio.wait_for(self.pc.close(), 5)
            except Exception:  # a severed peer may fail to close: it is thrown away either way
                pass
        if self.session:
            try:
                await self.http.delete(f"/v1/sessions/{self.session['session_id']}", headers=self.auth)
            except Exception:
                pass


async def _one_session(http, server: ServerProcess, kind: str, record: SessionRecord, seconds: float,
                       rng: np.random.Generator, turns, run_end: float) -> None:
    client = _Client(http, server, kind, record)
    try:
        await client.open(int(rng.integers(1 << 16)))
        if kind in ("ws", "webrtc"):
            start = await client.stream(seconds, rng, turns)
            client.measure_fps(start, time.monotonic())
            await client.close_cleanly()
        else:
            start = await client.stream_part(seconds, rng, turns)
            client.measure_fps(start, time.monotonic())
            client.drop()
            limit = min(REAP_LIMIT_S, max(5.0, run_end + 10.0 - time.monotonic()))
            record.reap_s = await client.wait_reaped(limit)
            if math.isnan(record.reap_s):
                if limit < REAP_LIMIT_S:
                    record.reap_cut = True
                else:
                    record.error = f"the server had not closed the session {REAP_LIMIT_S:.0f} s after the client vanished"
    except Exception as error:  # one session's failure is a figure, not the end of the run
        record.error = record.error or f"{type(error).__name__}: {error}"
    finally:
        await client.dispose()


# ---------------------------------------------------------------------------- the run


async def _idle_sample(server: ServerProcess, wait: float = 30.0) -> ProcessSample:
    """A sample once the server reports no session (or after ``wait``), tasks given 2 s to end."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        metrics = await asyncio.to_thread(server.metrics)
        if metrics.get("emolive_active_sessions", 1.0) == 0:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    return await asyncio.to_thread(server.sample)


async def _churn(server: ServerProcess, minutes: float, concurrency: int, seed: int, turns, result: ChurnResult,
                 on_sample) -> None:
    import httpx

    from server.webrtc import enable_loopback_candidates

    enable_loopback_candidates()
    _count_video_undecoded()
    duration = 60.0 * minutes
    interval = 60.0 if duration >= 600 else duration / 10
    result.idle_start = await _idle_sample(server, wait=0)
    t0 = time.monotonic()
    run_end = t0 + duration
    kinds = itertools.cycle(KINDS)
    rng = np.random.default_rng(seed)

    async def worker(i: int) -> None:
        await asyncio.sleep(1.5 * i)  # staggered, so sessions start and end at different times
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            while True:
                left = run_end - time.monotonic()
                seconds = min(float(rng.uniform(6.0, 14.0)), left - 2.0)
                if seconds < 3.0 or not server.alive():
                    return
                kind = next(kinds)
                record = SessionRecord(kind, time.monotonic() - t0, seconds)
                result.sessions.append(record)
                await _one_session(http, server, kind, record, seconds, np.random.default_rng(rng.integers(1 << 32)),
                                   turns, run_end)

    async def sampler() -> None:
        while True:
            sample = await asyncio.to_thread(server.sample)
            result.samples.append(sample)
            on_sample(sample, result)
            if not server.alive():
                result.server_died = True
                return
            if time.monotonic() + interval > run_end:
                return
            await asyncio.sleep(interval)

    sampling = asyncio.ensure_future(sampler())
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await sampling
    if server.alive():
        result.idle_end = await _idle_sample(server)
        on_sample(result.idle_end, result)
    else:
        result.server_died = True


def _count_video_undecoded() -> None:
    """Every VP8 stream of this process gets a CountingDecoder (whole frames checked, not decoded)."""
    import aiortc.rtcrtpreceiver as receiver

    real = receiver.get_decoder

    def get_decoder(codec):
        return CountingDecoder(SIZE) if codec.mimeType.lower() == "video/vp8" else real(codec)

    receiver.get_decoder = get_decoder


# ---------------------------------------------------------------------------- report


def _blame(result: ChurnResult) -> None:
    """A session the server logged an error about failed, whatever its client saw."""
    for record in result.sessions:
        if record.session_id:
            found = next((line for line in result.log_errors if record.session_id in line), "")
            record.server_error = found


def _verdict(result: ChurnResult, warmup_s: float) -> tuple[list[str], dict]:
    samples = [s for s in result.samples if s.at >= warmup_s] or result.samples[-1:]
    end = result.idle_end or result.samples[-1]
    start = result.idle_start
    figures: dict = {}
    failures: list[str] = []
    base = samples[0].rss_mb
    figures["rss_after_warmup_mb"] = base
    figures["rss_end_idle_mb"] = end.rss_mb
    figures["rss_growth_mb"] = end.rss_mb - base
    points = samples + ([result.idle_end] if result.idle_end else [])
    figures["rss_slope_mb_per_min"] = (float(np.polyfit([s.at / 60 for s in points], [s.rss_mb for s in points], 1)[0])
                                       if len(points) >= 3 else math.nan)
    if figures["rss_growth_mb"] >= RSS_LIMIT_MB:
        failures.append(f"RSS grew {figures['rss_growth_mb']:.1f} MB after warm-up (limit {RSS_LIMIT_MB:.0f})")
    figures["fds_idle_start"], figures["fds_idle_end"] = start.fds, end.fds
    if end.fds - start.fds > FD_SLACK:
        failures.append(f"open fds {start.fds} -> {end.fds} when idle (slack {FD_SLACK})")
    for gauge in TASK_GAUGES:
        if gauge in start.metrics and gauge in end.metrics:
            figures[f"{gauge}_idle_start"], figures[f"{gauge}_idle_end"] = start.metrics[gauge], end.metrics[gauge]
            if end.metrics[gauge] > start.metrics[gauge]:
                failures.append(f"{gauge} {start.metrics[gauge]:.0f} -> {end.metrics[gauge]:.0f} when idle")
    failed = [s for s in result.sessions if s.failed]
    figures["sessions"] = len(result.sessions)
    figures["sessions_failed"] = len(failed)
    if failed:
        failures.append(f"{len(failed)} of {len(result.sessions)} sessions failed")
    if result.server_died:
        failures.append("the server process died")
    if result.idle_end is None:
        failures.append("no idle sample at the end")
    return failures, figures


def _report(console, result: ChurnResult, args, warmup_s: float) -> tuple[list[str], dict]:
    from rich.table import Table

    table = Table(title=f"emolive bench sessions — {args.minutes:g} min, concurrency {args.concurrency}, "
                        f"loop {args.loop}: server samples")
    for column in ("t min", "RSS server MB", "RSS workers MB", "fds", "workers", *(g.removeprefix("emolive_") for g in TASK_GAUGES),
                   "active", "peers", "sockets"):
        table.add_column(column, justify="right")
    rows = ([("idle", result.idle_start)] + [(f"{s.at / 60:.1f}", s) for s in result.samples]
            + ([("idle end", result.idle_end)] if result.idle_end else []))
    for label, s in rows:
        m = s.metrics
        table.add_row(label, _fmt(s.rss_server_mb), _fmt(s.rss_workers_mb), str(s.fds), str(len(s.workers)),
                      *(_fmt(m.get(g, math.nan), 0) for g in TASK_GAUGES),
                      _fmt(m.get("emolive_active_sessions", math.nan), 0), _fmt(m.get("emolive_webrtc_peers", math.nan), 0),
                      _fmt(m.get("emolive_websockets", math.nan), 0),
                      style="dim" if label != "idle end" and s.at < warmup_s else None)
    console.print(table)
    kinds = Table(title="sessions by kind (fps: video frames or motion rows received per second)")
    for column in ("kind", "sessions", "failed", "fps min", "fps median", "events", "reaped after s (median / max)",
                   "cut by the end"):
        kinds.add_column(column, justify="right")
    for kind in KINDS:
        group = [s for s in result.sessions if s.kind == kind]
        if not group:
            continue
        fps = [s.fps for s in group if not math.isnan(s.fps)]
        reaps = [s.reap_s for s in group if not math.isnan(s.reap_s)]
        kinds.add_row(kind, str(len(group)), str(sum(s.failed for s in group)), _fmt(min(fps, default=math.nan)),
                      _fmt(statistics.median(fps) if fps else math.nan), str(sum(s.events for s in group)),
                      f"{_fmt(statistics.median(reaps) if reaps else math.nan)} / {_fmt(max(reaps, default=math.nan))}"
                      if kind.startswith(("drop", "stall")) else "",
                      str(sum(s.reap_cut for s in group)) if kind.startswith(("drop", "stall")) else "",
                      style="red" if any(s.failed for s in group) else None)
    console.print(kinds)
    for s in [s for s in result.sessions if s.failed][:10]:
        console.print(f"  failed {s.kind} at {s.started_at:.0f} s: {s.error or 'server log: ' + s.server_error}",
                      style="red", highlight=False)
    if result.log_errors:
        console.print(f"server log: {len(result.log_errors)} error lines; first: {result.log_errors[0][:300]}",
                      style="yellow", highlight=False)
    failures, figures = _verdict(result, warmup_s)
    task_text = ", ".join(f"{g.removeprefix('emolive_')} {figures[g + '_idle_start']:.0f} -> {figures[g + '_idle_end']:.0f}"
                          for g in TASK_GAUGES if g + "_idle_start" in figures) or "task gauges: not in /metrics"
    summary = (f"RSS {figures['rss_growth_mb']:+.1f} MB after warm-up ({_fmt(figures['rss_slope_mb_per_min'], 2)} MB/min), "
               f"fds idle {figures['fds_idle_start']} -> {figures['fds_idle_end']}, {task_text}, "
               f"{figures['sessions_failed']}/{figures['sessions']} sessions failed")
    if failures:
        console.print(f"[bold red]sessions FAILED:[/bold red] {'; '.join(failures)}  ({summary})", highlight=False)
    else:
        console.print(f"[bold green]sessions passed[/bold green]: {summary}", highlight=False)
    return failures, figures


def bench_sessions(args: argparse.Namespace) -> None:
    from engine.errors import BadInputError

    if not args.minutes > 0:
        raise BadInputError(f"--minutes must be positive, got {args.minutes}")
    if not 1 <= args.concurrency <= 16:
        raise BadInputError(f"--concurrency must be between 1 and 16, got {args.concurrency}")
    console = _console()
    turns, source = speech_turns()
    warmup_s = min(120.0, 60.0 * args.minutes / 3)
    result = ChurnResult()

    def on_sample(sample: ProcessSample, res: ChurnResult) -> None:
        if not args.quiet:
            m = sample.metrics
            console.print(f"  t={sample.at:6.0f} s  RSS {sample.rss_mb:7.1f} MB  fds {sample.fds:4d}  "
                          f"tasks {_fmt(m.get('emolive_asyncio_tasks', math.nan), 0)}  "
                          f"sessions {len(res.sessions)} ({sum(s.failed for s in res.sessions)} failed)",
                          style="dim", highlight=False)

    with tempfile.TemporaryDirectory(prefix="emolive-churn-") as tmp:
        server = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log", loop=args.loop,
                               extra=("--max-sessions", str(args.concurrency + 2)))
        console.print(f"sessions: {args.minutes:g} min, up to {args.concurrency} at once, kinds {', '.join(KINDS)} in "
                      f"turn; speech: {source}; server: {' '.join(server.command[1:])}", style="dim", highlight=False)
        with server:
            asyncio.run(_churn(server, args.minutes, args.concurrency, args.seed, turns, result, on_sample))
            log = server.log()
        result.server_exit = server.proc.returncode if server.proc else None
        result.log_errors = log_errors(log)
        _blame(result)
    failures, figures = _report(console, result, args, warmup_s)
    if args.json:
        out = {"minutes": args.minutes, "concurrency": args.concurrency, "loop": args.loop, "warmup_s": warmup_s,
               "figures": figures, "failures": failures,
               "samples": [asdict(s) for s in result.samples],
               "idle_start": asdict(result.idle_start) if result.idle_start else None,
               "idle_end": asdict(result.idle_end) if result.idle_end else None,
               "sessions": [dict(asdict(s), failed=s.failed) for s in result.sessions],
               "server_log_errors": result.log_errors[:50]}
        write_figures(args.json, out)
        console.print(f"wrote {args.json}", style="dim")
    if failures:
        raise SystemExit(1)


def add_sessions_parser(bench_kinds) -> None:
    parser = bench_kinds.add_parser(
        "sessions", help="sessions created, streamed and dropped for an hour against `emolive serve`: leaks",
        description="Starts `emolive serve` (a subprocess, as a user runs it) and for --minutes creates, streams "
                    "and drops sessions, up to --concurrency at once: WebSocket-only (events + motion), WebRTC "
                    "(an aiortc peer receiving video + audio), and abrupt ends (socket aborted without a close "
                    "frame, peer abandoned without a close, a client that stops reading). Samples the server's "
                    "RSS (with its render workers), open fds and /metrics every minute; prints the samples, "
                    "the sessions by kind and a verdict: RSS growth after the first 2 minutes < 50 MB, fds and "
                    "task gauges back to their idle values, no failed session. Exits 1 when it fails.",
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="duration (default: 60)")
    parser.add_argument("--concurrency", type=int, default=2, metavar="N", help="sessions at once (default: 2)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="the server's event loop, passed to `emolive serve --loop` (default: auto, which is "
                             "uvloop when installed)")
    parser.add_argument("--seed", type=int, default=0, help="seed for session lengths and speech (default: 0)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the samples, sessions and verdict here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
