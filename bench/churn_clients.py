"""The clients of ``bench sessions``: one session each, over HTTP, a WebSocket and (for the
WebRTC kinds) an aiortc peer, ended cleanly or abruptly as its kind says (``emolive.bench.churn``)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from emolive.bench.server_process import ServerProcess
from emolive.bench.speech import CHUNK, RATE, Feeder, sleep_until
from emolive.engine.formats import FRAME_SIZE

SIZE = FRAME_SIZE
FIRST_FRAME_TIMEOUT_S = 20.0
REAP_LIMIT_S = 75.0  # past the server's WebSocket keepalive (uvicorn: ping every 20 s, 20 s to answer)


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


async def one_session(http, server: ServerProcess, kind: str, record: SessionRecord, seconds: float,
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

