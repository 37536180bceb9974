"""The talking face as voice-agent frameworks use it: push the agent's voice, get 25 fps
pictures with that voice in sync, and turn events; from the engine in this process or from a
remote ``emolive serve``.

Both sources give one ordered stream (:meth:`Face.stream`): a :class:`FaceFrame` every 40 ms
(the picture and the 40 ms of voice that belong to it: silence when idle) and a
:class:`PlaybackEvent` right after the frame it happened at. The frameworks' adapters
(:mod:`emolive.integrations.pipecat`, :mod:`emolive.integrations.livekit`) only translate that stream.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from emolive.engine.formats import FRAME_SIZE, VOICE_RATE, VOICE_SAMPLES_PER_FRAME
from emolive.engine.motion_space import FPS

if TYPE_CHECKING:
    from emolive.engine.render_workers import RenderWorkers

log = logging.getLogger("emolive.integrations")

__all__ = ["FPS", "VOICE_RATE", "VOICE_SAMPLES_PER_FRAME", "Face", "FaceFrame", "LocalFace", "PlaybackEvent",
           "RemoteFace"]


@dataclass
class FaceFrame:
    """One 40 ms frame: the picture and exactly the voice that plays with it."""

    index: int
    image: np.ndarray | None  # RGB uint8 (size, size, 3); None when this frame's picture was dropped
    audio: np.ndarray  # (VOICE_SAMPLES_PER_FRAME,) int16 at VOICE_RATE, silence when idle
    speaking: bool  # the frame carries turn voice


@dataclass(frozen=True)
class PlaybackEvent:
    """``playback_started`` / ``playback_finished`` of a turn, after the frame it happened at."""

    type: str
    turn: int
    position_ms: float
    interrupted: bool
    frame_index: int


class Face(Protocol):
    """A talking face: the interface both sources share."""

    size: int

    async def start(self) -> None: ...
    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None: ...
    def end_of_turn(self) -> None: ...
    def interrupt(self) -> None: ...
    def stream(self) -> AsyncIterator[FaceFrame | PlaybackEvent]: ...
    async def close(self) -> None: ...


class _Ordered:
    """Frames and events into one stream, each event after the frame it happened at (the two
    reach us on separate paths, so an event may arrive before its frame)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[FaceFrame | PlaybackEvent | None] = asyncio.Queue()
        self._held: list[PlaybackEvent] = []
        self._last = -1

    def put(self, item: FaceFrame | PlaybackEvent | None) -> None:
        self.queue.put_nowait(item)

    async def items(self) -> AsyncIterator[FaceFrame | PlaybackEvent]:
        while (item := await self.queue.get()) is not None:
            if isinstance(item, PlaybackEvent):
                if item.frame_index > self._last:
                    self._held.append(item)
                    continue
                yield item
                continue
            self._last = item.index
            yield item
            ready = [e for e in self._held if e.frame_index <= item.index]
            self._held = [e for e in self._held if e.frame_index > item.index]
            for event in ready:
                yield event


class LocalFace:
    """The engine in this process: one :class:`emolive.engine.session.Session`, realtime.

    ``render_workers`` says where the frames are rendered: a number of worker processes the
    face starts for itself (plus a spare, see :class:`emolive.engine.render_workers.RenderWorkers`), a
    pool shared with other faces (a bot server starts one at startup, so a call does not wait
    for processes; the face does not close it), or 0: a thread of this process. Worker
    processes keep renders off the agent's interpreter, which also paces its transport's audio:
    a render waiting there for the interpreter lock delays voice packets, and the listener's
    jitter buffer grows. Spawning them needs ``if __name__ == "__main__"`` in the main script.
    ``rig`` is a prepared avatar (``emolive.engine.offline.prepare_avatar``), to skip preparing it.

    ``motion`` defaults to the baseline, not the student that ``emolive serve`` runs: the motion
    step runs in the agent's process, and with the student there Chromium's audio jitter buffer
    in the Pipecat bot grew to 135-224 ms (46-70 with the baseline) and the voice stopped
    263-360 ms after an interruption instead of 87-92. For the student, use a
    :class:`RemoteFace` on a server, or pass ``motion="student"`` where the voice's path can
    take it.
    """

    def __init__(self, portrait: str | Path | None = None, *, size: int = FRAME_SIZE, motion: str = "baseline",
                 rig: Any = None, render_workers: RenderWorkers | int = 1) -> None:
        if isinstance(render_workers, int) and render_workers < 0:
            raise ValueError(f"render_workers must be a pool or 0 or more processes, got {render_workers}")
        self.size = size
        self._portrait = portrait
        self._motion = motion
        self._rig = rig
        self._render_workers = render_workers
        self._own_workers: RenderWorkers | None = None  # started here, closed with the face
        self._session: Any = None
        self._ordered = _Ordered()
        self._tasks: list[asyncio.Task] = []

    @property
    def latency_ms(self) -> float:
        """Voice in -> the frame showing it (the engine's lookahead, one frame, compute)."""
        return float(self._session.latency_ms) if self._session is not None else float("nan")

    async def start(self) -> None:
        from emolive.engine.motion.registry import create_motion_model
        from emolive.engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar
        from emolive.engine.render_workers import RenderWorkers
        from emolive.engine.session import Session
        from emolive.engine.session_types import SessionOptions

        if self._rig is None:
            portrait = self._portrait or DEFAULT_PORTRAIT
            _, self._rig = await asyncio.to_thread(prepare_avatar, portrait, RenderOptions(size=self.size))
        model = await asyncio.to_thread(create_motion_model, self._motion)
        workers = self._render_workers
        if isinstance(workers, int):
            if workers:
                self._own_workers = workers = await asyncio.to_thread(RenderWorkers, workers)
            else:
                workers = None
        self._session = Session(self._rig, model, SessionOptions(realtime=True), render_workers=workers)
        self._tasks = [asyncio.create_task(self._frames()), asyncio.create_task(self._events())]

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        self._session.push_audio(samples, sample_rate)

    def end_of_turn(self) -> None:
        self._session.end_of_turn()

    def interrupt(self) -> None:
        self._session.interrupt()

    def stream(self) -> AsyncIterator[FaceFrame | PlaybackEvent]:
        return self._ordered.items()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_workers is not None:
            await asyncio.to_thread(self._own_workers.close)
            self._own_workers = None
        self._ordered.put(None)

    async def _frames(self) -> None:
        try:
            async for frame in self._session.frames():
                self._ordered.put(FaceFrame(frame.index, frame.image, frame.audio, frame.speaking))
        finally:
            self._ordered.put(None)

    async def _events(self) -> None:
        async for event in self._session.events():
            self._ordered.put(PlaybackEvent(event.type, event.turn, float(event.position_ms), event.interrupted,
                                            event.frame_index))


class RemoteFace:
    """A session on a remote ``emolive serve``, over its WebSocket API: PCM16 in; events, JPEG
    pictures and the delayed voice (``want: ["events", "jpeg", "audio"]``) out.

    Loads no model (neither torch nor mediapipe is imported): a process with this face only
    moves audio and pictures. Audio pushed between two sends goes out as one message (the
    server limits messages a second, not bytes).
    """

    def __init__(self, server: str, *, avatar_id: str = "default", size: int = FRAME_SIZE, motion: str | None = None,
                 token: str | None = None, jpeg_quality: int = 85) -> None:
        self.size = size
        self.server = server.rstrip("/")
        self._params: dict[str, Any] = {"mode": "tts", "avatar_id": avatar_id, "size": size}
        if motion is not None:
            self._params["motion"] = motion
        self._api_token = token  # a bearer token for POST /v1/sessions, if the server wants one
        self._jpeg_quality = jpeg_quality
        self._ordered = _Ordered()
        self._outbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._ws: Any = None
        self.session_id = ""
        self._rate = 0

    async def start(self) -> None:
        import websockets

        session = await asyncio.to_thread(self._create_session)
        self.session_id = session["session_id"]
        query = urllib.parse.urlencode({"token": session["token"]})
        url = self.server.replace("http", "ws", 1) + f"/v1/sessions/{self.session_id}/ws?{query}"
        self._ws = await websockets.connect(url, max_size=None)
        await self._ws.send(json.dumps({"type": "start", "want": ["events", "jpeg", "audio"],
                                        "jpeg_quality": self._jpeg_quality}))
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._receive())]

    def push_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        pcm = np.asarray(samples)
        if pcm.ndim == 2:
            pcm = pcm.mean(axis=1)
        if pcm.dtype != np.int16:
            scale = 32767.0 if np.issubdtype(pcm.dtype, np.floating) else 1.0
            pcm = np.clip(np.round(pcm * scale), -32768, 32767)
        self._queue("audio", (int(sample_rate), pcm.astype("<i2")))

    def end_of_turn(self) -> None:
        self._queue("end_of_turn", None)

    def interrupt(self) -> None:
        # Audio not yet sent belongs to the interrupted turn: drop it rather than send it.
        self._outbox = collections.deque(item for item in self._outbox if item[0] != "audio")
        self._queue("interrupt", None)

    def stream(self) -> AsyncIterator[FaceFrame | PlaybackEvent]:
        return self._ordered.items()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self.session_id:
            await asyncio.to_thread(self._delete_session)
        self._ordered.put(None)

    # -- REST ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{self.server}{path}", method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
        return json.loads(data) if data else None

    def _create_session(self) -> dict:
        return self._request("POST", "/v1/sessions", self._params, self._api_token)

    def _delete_session(self) -> None:
        try:
            self._request("DELETE", f"/v1/sessions/{self.session_id}")
        except OSError:
            pass  # already gone: it closes with its last client anyway

    # -- socket --------------------------------------------------------------------------

    def _queue(self, kind: str, payload: Any) -> None:
        self._outbox.append((kind, payload))
        self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                kind, payload = self._outbox.popleft()
                if kind != "audio":
                    await self._ws.send(json.dumps({"type": kind}))
                    continue
                rate, pcm = payload
                parts = [pcm]
                while self._outbox and self._outbox[0][0] == "audio" and self._outbox[0][1][0] == rate:
                    parts.append(self._outbox.popleft()[1][1])
                if rate != self._rate:
                    await self._ws.send(json.dumps({"type": "start", "sample_rate": rate}))
                    self._rate = rate
                await self._ws.send(np.concatenate(parts).tobytes())

    async def _receive(self) -> None:
        image: tuple[int, np.ndarray] | None = None  # the newest picture and its frame index
        header: dict | None = None
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    if header is None:
                        continue
                    if header["type"] == "frame":
                        picture = await asyncio.to_thread(_decode_jpeg, message)
                        image = (header["index"], picture)
                    elif header["type"] == "audio":
                        index = header["index"]
                        audio = np.frombuffer(message, dtype="<i2").astype(np.int16)
                        picture = image[1] if image is not None and image[0] == index else None
                        self._ordered.put(FaceFrame(index, picture, audio, bool(header.get("speaking"))))
                    header = None
                    continue
                data = json.loads(message)
                kind = data.get("type")
                if kind in ("frame", "audio"):
                    header = data
                elif kind in ("playback_started", "playback_finished"):
                    self._ordered.put(PlaybackEvent(kind, int(data["turn"]), float(data["position_ms"]),
                                                    bool(data.get("interrupted", False)), int(data["frame_index"])))
                elif kind == "error":
                    log.warning("emolive server: %s", data.get("message"))
                elif kind == "closed":
                    log.info("emolive session closed: %s", data.get("reason"))
        finally:
            self._ordered.put(None)


def _decode_jpeg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[..., ::-1])
