"""The session WebSocket: PCM16 audio and control JSON in; events, motion rows, JPEG, voice out.

The wire protocol is specified in ``server/PROTOCOL.md``. Malformed input never ends the
session: it is answered with ``{"type": "error", "message": ...}`` and ignored.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any

import cv2
import numpy as np
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from emolive.engine.motion_space import CHANNELS, FPS
from emolive.engine.formats import VOICE_RATE
from emolive.server.errors import ApiError
from emolive.server.sessions import LiveSession, SessionRegistry

log = logging.getLogger("emolive.server")

STREAMS = ("events", "motion", "jpeg", "audio")
DEFAULT_RATE = 16_000
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_AUDIO_MESSAGE_BYTES = 10 * MAX_RATE * 2  # 10 s at the highest rate
# Frames a slow client may lag behind before the oldest are dropped.
MOTION_BACKLOG = 25
JPEG_BACKLOG = 2
# The voice is never dropped with a frame's JPEG (a gap would be heard); a client more than
# this many frames behind loses the oldest.
AUDIO_BACKLOG = 10 * FPS
# Messages a client may send: this many a second on average, in bursts of up to BURST. A TTS
# source pushing 20 ms chunks 10x faster than real time sends 500 a second.
MESSAGE_RATE = 1000.0
MESSAGE_BURST = 2000.0
# A client over its message rate this long in a row is disconnected (1008).
FLOOD_LIMIT_S = 3.0
# Control messages (events, errors) waiting for a client that does not read; past this the
# socket is closed (1008), so a stalled client cannot hold unbounded memory.
MAX_QUEUED_MESSAGES = 512
# Error replies: bursts of ERROR_BURST, then ERROR_RATE a second; the answer to a flood of bad
# input must not be a flood (the next error sent says how many were left out).
ERROR_RATE = 5.0
ERROR_BURST = 20.0


class MessageBudget:
    """A token bucket over incoming messages: ``take()`` is False while the client sends
    faster than ``rate`` a second beyond a burst of ``burst``."""

    def __init__(self, rate: float = MESSAGE_RATE, burst: float = MESSAGE_BURST) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._last = time.monotonic()
        self.over_since: float | None = None  # when the client went over and stayed over

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.over_since = None
            return True
        if self.over_since is None:
            self.over_since = now
        return False


class Flooding(Exception):
    """The client broke a limit that ends its socket (close code 1008)."""


def _token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return websocket.query_params.get("token")


async def _deny(websocket: WebSocket, error: ApiError) -> None:
    """Refuse the handshake with the HTTP status and JSON body the REST API would give; a
    server without the denial-response extension gets a plain close (HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse({"error": error.message}, error.status, error.headers))
    else:
        await websocket.close(code=1008, reason=error.message[:120])


class SessionSocket:
    """One WebSocket attached to one session."""

    def __init__(self, websocket: WebSocket, live: LiveSession, metrics) -> None:
        self.ws = websocket
        self.live = live
        self.metrics = metrics
        self.sample_rate = DEFAULT_RATE
        self.want: set[str] = {"events"}
        self.jpeg_quality = 80
        self.control: collections.deque[dict] = collections.deque()
        self.frames: collections.deque = collections.deque(maxlen=MOTION_BACKLOG)
        self.voice: collections.deque = collections.deque(maxlen=AUDIO_BACKLOG)  # (index, t, speaking, PCM16)
        self.wake = asyncio.Event()
        self.closing = False
        self.budget = MessageBudget()
        self._error_budget = MessageBudget(ERROR_RATE, ERROR_BURST)
        self._errors_left_out = 0
        self.stalled = False  # more control messages queued than MAX_QUEUED_MESSAGES

    # -- outgoing ------------------------------------------------------------------------

    def send_json(self, message: dict) -> None:
        if len(self.control) >= MAX_QUEUED_MESSAGES:
            self.stalled = True  # the sender closes the socket
        else:
            self.control.append(message)
        self.wake.set()

    def error(self, message: str) -> None:
        if not self._error_budget.take():
            self._errors_left_out += 1
            return
        if self._errors_left_out:
            message += f" ({self._errors_left_out} earlier errors were not reported: too many)"
            self._errors_left_out = 0
        self.send_json({"type": "error", "message": message})

    def put_frame(self, frame: Any) -> None:  # FrameSink, called by the session's pump
        if "audio" in self.want:
            self.voice.append((int(frame.index), round(float(frame.timestamp), 4), bool(frame.speaking),
                               np.asarray(frame.audio, dtype="<i2").tobytes()))
            self.wake.set()
        if not ({"motion", "jpeg"} & self.want):
            return
        if len(self.frames) == self.frames.maxlen:
            dropped = self.frames.popleft()
            if "jpeg" in self.want and dropped.image is not None:
                self.live.count_dropped("ws")
        self.frames.append(frame)
        self.wake.set()

    def on_event(self, event: Any) -> None:  # event listener
        if "events" not in self.want:
            return
        message = {"type": event.type, "turn": int(event.turn), "position_ms": float(event.position_ms),
                   "frame_index": int(event.frame_index)}
        if event.type == "playback_finished":
            message["interrupted"] = bool(event.interrupted)
        self.send_json(message)

    async def sender(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.stalled:
                raise Flooding(f"client is not reading: {MAX_QUEUED_MESSAGES} messages wait for it")
            while self.control or self.frames or self.voice:
                while self.control:
                    await self.ws.send_text(json.dumps(self.control.popleft()))
                if not self.frames:
                    await self.send_voice(None)
                    continue
                frame = self.frames.popleft()
                await self.send_voice(int(frame.index) - 1)  # of frames whose pictures were dropped
                t = round(float(frame.timestamp), 4)
                if "motion" in self.want:
                    values = {name: round(float(v), 5) for name, v in zip(CHANNELS, np.asarray(frame.motion).tolist())}
                    await self.ws.send_text(json.dumps({"type": "motion", "index": int(frame.index), "t": t,
                                                        "speaking": bool(frame.speaking), "values": values}))
                if "jpeg" in self.want and frame.image is not None:
                    quality = self.jpeg_quality
                    ok, data = await loop.run_in_executor(
                        None, lambda im=frame.image: cv2.imencode(".jpg", np.ascontiguousarray(im[..., ::-1]),
                                                                  [cv2.IMWRITE_JPEG_QUALITY, quality]))
                    if ok:
                        payload = data.tobytes()
                        await self.ws.send_text(json.dumps({"type": "frame", "index": int(frame.index), "t": t,
                                                            "format": "jpeg", "bytes": len(payload)}))
                        await self.ws.send_bytes(payload)
                await self.send_voice(int(frame.index))

    async def send_voice(self, last: int | None) -> None:
        """Send the queued voice of frames up to index ``last`` (None: all of it), each as an
        ``audio`` header and its PCM16: after the frame's picture, so a client pairs them."""
        while self.voice and (last is None or self.voice[0][0] <= last):
            index, t, speaking, payload = self.voice.popleft()
            await self.ws.send_text(json.dumps({"type": "audio", "index": index, "t": t, "speaking": speaking,
                                                "sample_rate": VOICE_RATE, "bytes": len(payload)}))
            await self.ws.send_bytes(payload)

    # -- incoming ------------------------------------------------------------------------

    def on_audio(self, data: bytes) -> None:
        if not data:
            return
        if len(data) % 2:
            self.error(f"binary messages are PCM16 mono little-endian: whole 2-byte samples, got {len(data)} bytes")
            return
        if len(data) > MAX_AUDIO_MESSAGE_BYTES:
            self.error(f"audio message of {len(data)} bytes is too large; send 20 ms chunks")
            return
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        try:
            self.live.engine.push_audio(samples, self.sample_rate)
        except (ValueError, RuntimeError) as error:
            self.error(f"audio refused: {error}")

    def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.error("text messages must be JSON objects with a 'type'")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.error("text messages must be JSON objects with a 'type'")
            return
        kind = message["type"]
        if kind == "start":
            self.on_start(message)
        elif kind == "interrupt":
            self.live.engine.interrupt()
        elif kind == "end_of_turn":
            self.live.engine.end_of_turn()
        elif kind == "ping":
            self.send_json({"type": "pong", "frame_index": self.live.last_index})
        else:
            self.error(f"unknown message type {kind!r}; expected start, interrupt, end_of_turn or ping")

    def on_start(self, message: dict) -> None:
        rate = message.get("sample_rate", self.sample_rate)
        want = message.get("want", sorted(self.want))
        quality = message.get("jpeg_quality", self.jpeg_quality)
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            self.error(f"sample_rate must be an integer between {MIN_RATE} and {MAX_RATE}, got {rate!r}")
            return
        if not isinstance(want, list) or not all(isinstance(w, str) and w in STREAMS for w in want):
            self.error(f"want must be a list drawn from {list(STREAMS)}, got {want!r}")
            return
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            self.error(f"jpeg_quality must be an integer between 1 and 100, got {quality!r}")
            return
        self.sample_rate, self.want, self.jpeg_quality = rate, set(want), quality
        self.frames = collections.deque(self.frames, maxlen=JPEG_BACKLOG if "jpeg" in self.want else MOTION_BACKLOG)
        if "audio" not in self.want:
            self.voice.clear()
        self.send_json({"type": "started", "session_id": self.live.id, "sample_rate": rate, "want": sorted(self.want),
                        "fps": FPS, "channels": list(CHANNELS), "mode": self.live.params.mode})

    def over_budget(self) -> bool:
        """Whether this message goes over the client's message rate (then it is dropped)."""
        if self.budget.take():
            return False
        now = time.monotonic()
        if now - self.budget.over_since > FLOOD_LIMIT_S:
            raise Flooding(f"more than {MESSAGE_RATE:g} messages a second for {FLOOD_LIMIT_S:g} s")
        self.error(f"over the message rate ({MESSAGE_RATE:g} a second, bursts of {MESSAGE_BURST:g}): input dropped")
        return True

    async def receiver(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self.over_budget():
                continue
            if message.get("bytes") is not None:
                self.on_audio(message["bytes"])
            elif message.get("text") is not None:
                self.on_text(message["text"])

    async def close(self) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            reason = f"session closed: {self.live.close_reason}"[:120]
            self.control.append({"type": "closed", "reason": self.live.close_reason,
                                 "failure": self.live.failure or None})
            try:
                while self.control:
                    await self.ws.send_text(json.dumps(self.control.popleft()))
                await self.ws.close(code=1000, reason=reason)
            except Exception:
                pass


async def session_websocket(websocket: WebSocket, session_id: str, registry: SessionRegistry) -> None:
    try:
        live = registry.authorize(session_id, _token(websocket))
    except ApiError as error:
        await _deny(websocket, error)
        return
    await websocket.accept()
    sock = SessionSocket(websocket, live, registry.metrics)
    live.attach(sock)
    live.add_sink(sock)
    live.add_listener(sock.on_event)
    registry.metrics.websockets.inc()
    receiver = asyncio.ensure_future(sock.receiver())
    sender = asyncio.ensure_future(sock.sender())
    closed = asyncio.ensure_future(live.closed.wait())
    flooding: Flooding | None = None
    try:
        await asyncio.wait({receiver, sender, closed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (receiver, sender):
            if task.done() and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                if isinstance(error, Flooding):
                    flooding = error
                    log.warning("session %s: websocket closed: %s", live.id, error)
                elif not isinstance(error, (WebSocketDisconnect, RuntimeError, OSError)):
                    log.error("session %s: websocket task failed", live.id, exc_info=error)
    finally:
        for task in (receiver, sender, closed):
            task.cancel()
        await asyncio.gather(receiver, sender, closed, return_exceptions=True)
        live.remove_sink(sock)
        live.remove_listener(sock.on_event)
        live.detach(sock)
        registry.metrics.websockets.dec()
        if live.closed.is_set():
            await sock.close()
        else:
            try:
                if flooding is not None:
                    await websocket.close(code=1008, reason=str(flooding)[:120])
                else:
                    await websocket.close()
            except Exception:
                pass
