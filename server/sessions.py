"""Live sessions: the registry (limits, tokens, expiry) and each session's lifecycle.

A :class:`LiveSession` wraps one ``emolive.engine.session.Session``. Exactly one task consumes
``Session.frames()`` and fans every frame out to the session's sinks (the WebRTC video and
audio tracks, WebSocket subscribers), so every output shares the engine's clock. A second
task fans ``Session.events()`` out to listeners.

Clients (a WebSocket, a WebRTC peer) *attach* to a session while they are connected. A
session whose last client left is closed ``detach_grace_s`` later; one that no client ever
attached to expires after ``idle_timeout_s``. Closing cancels every task of the session,
closes its peer connection and WebSockets, and closes the engine session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import asdict
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from emolive.engine.motion.batching import BatchingConfig, MotionBatcher
from emolive.engine.formats import FRAME_SIZE, MAX_FRAME_SIZE, MIN_FRAME_SIZE
from emolive.engine.motion.registry import MOTION_MODELS, create_motion_model
from emolive.engine.render_workers import RenderWorkerError, RenderWorkers
from emolive.engine.motion_space import MotionControls
from emolive.engine.session import Session
from emolive.engine.session_types import SessionEvent, SessionFrame, SessionOptions
from emolive.server.avatars import DEFAULT_ID, AvatarStore
from emolive.server.config import Settings
from emolive.server.errors import ApiError, not_found
from emolive.server.metrics import Metrics

log = logging.getLogger("emolive.server")

# An ended session's last state stays readable (GET /v1/sessions/{id}) this long, for so many
# sessions at most: a client whose session failed can still learn why.
ENDED_KEEP_S = 600.0
# How long closing a session waits for its engine's frame loop and compute job to stop.
ENGINE_CLOSE_TIMEOUT_S = 2.0
ENDED_KEEP = 256


class SessionParams(BaseModel):
    """What a client asks a session to be: the API's request body, and what the server keeps."""

    model_config = ConfigDict(frozen=True)

    avatar_id: str = Field(DEFAULT_ID, description="avatar to animate ('default' is the bundled portrait)")
    mode: Literal["tts", "puppet"] = Field(
        "tts", description="tts: speech arrives as PCM16 on the WebSocket and is sent back, lip-synced, "
                           "as the WebRTC audio track; puppet: the WebRTC peer's microphone drives the face")
    size: int = Field(FRAME_SIZE, ge=MIN_FRAME_SIZE, le=MAX_FRAME_SIZE, multiple_of=2,
                      description="square frame side in pixels")
    motion: str | None = Field(None, description=f"motion model: {', '.join(MOTION_MODELS)}, optionally with "
                                                 "sampling steps ('student:4'); default: the server's")
    head_motion: float = Field(1.0, ge=0.0, le=2.0, description="0 still, 1 natural, 2 lively")
    expressiveness: float = Field(1.0, ge=0.0, le=2.0, description="brows, cheeks, smiles: 0 flat .. 2 animated")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for blinks and head sway")
    video: bool = Field(True, description="render video; false: events and motion rows only")

    def engine_options(self, max_pending_seconds: float) -> SessionOptions:
        """The engine session's options for these parameters."""
        controls = MotionControls(head_motion=self.head_motion, expressiveness=self.expressiveness, seed=self.seed)
        return SessionOptions(controls=controls, render_video=self.video, realtime=True,
                              max_pending_seconds=max_pending_seconds)


class FrameSink(Protocol):
    def put_frame(self, frame: SessionFrame) -> None: ...


# A measurement hook (``emolive bench stream``, ``bench avsync``): called with the track's kind
# ("video" or "audio"), the pts of the frame or packet it hands aiortc's RTP sender and the
# CLOCK_MONOTONIC time it does.
SentObserver = Callable[[str, int, float], None]


class LiveSession:
    def __init__(self, session_id: str, token: str, params: SessionParams, engine: Session,
                 metrics: Metrics, settings: Settings) -> None:
        self.id = session_id
        self.token = token
        self.params = params
        self.engine = engine
        self.created = time.time()
        self._metrics = metrics
        self._settings = settings
        self._sinks: set[FrameSink] = set()
        self._listeners: set[Callable[[SessionEvent], None]] = set()
        self._clients: set[object] = set()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Task] = set()
        self.ever_attached = False
        self.idle_since = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.frames_out = 0
        self.frames_dropped = 0
        self.fps = 0.0
        self.fps_measured = False  # fps covers a full second
        self.last_index = -1
        self.peer: Any = None  # the server's RTCPeerConnection, if any (server.webrtc)
        # Told of every frame and packet the WebRTC tracks send; empty (and free) unless measured.
        self.sent_observers: list[SentObserver] = []
        self.failure = ""  # set by fail(): one of metrics.FAILURE_REASONS
        self.failed = ""  # set by fail(): what happened, in words (the close reason)

    # -- tasks ---------------------------------------------------------------------------

    def start(self) -> None:
        self.spawn(self._pump_frames(), "frames")
        self.spawn(self._pump_events(), "events")

    def spawn(self, coro: Awaitable, name: str) -> asyncio.Task:
        """Run ``coro`` as one of this session's tasks: cancelled when the session closes."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"session-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=task.exception())
        if task.get_name().endswith(("-frames", "-events")) and not self.closed.is_set():
            stream, error = task.get_name().rsplit("-", 1)[1], task.exception()
            if error is None:
                self.fail("engine_error", f"the engine's {stream} stream ended")
            else:
                self.fail(_failure_reason(error), f"the engine's {stream} stream failed: {error}")

    def fail(self, reason: str, detail: str) -> None:
        """Mark the session failed (the first failure wins; counted once): the registry closes
        it at once, with ``detail`` as its close reason."""
        if self.failure or self.closed.is_set():
            return
        self.failure, self.failed = reason, detail
        self._metrics.sessions_failed.labels(reason).inc()
        log.warning("session %s failed (%s): %s", self.id, reason, detail)

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    async def _pump_frames(self) -> None:
        window_start, window_frames = time.monotonic(), 0
        m = self._metrics
        async for frame in self.engine.frames():
            self.last_index = frame.index
            if frame.image is None and self.params.video:
                self.frames_dropped += 1
                m.dropped_frames.labels("engine").inc()
            else:
                self.frames_out += 1
                window_frames += 1
                m.frames_out.inc()
            m.engine_latency.observe(self.engine.latency_ms / 1000.0)
            for sink in tuple(self._sinks):
                try:
                    sink.put_frame(frame)
                except Exception:  # one broken client must not stop the others
                    log.exception("session %s: frame sink failed", self.id)
                    self._sinks.discard(sink)
            now = time.monotonic()
            if now - window_start >= 1.0:
                self.fps = window_frames / (now - window_start)
                self.fps_measured = True
                m.observe_fps(self.id, self.fps)
                window_start, window_frames = now, 0

    async def _pump_events(self) -> None:
        async for event in self.engine.events():
            for listener in tuple(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("session %s: event listener failed", self.id)

    # -- fan-out -------------------------------------------------------------------------

    def add_sink(self, sink: FrameSink) -> None:
        self._sinks.add(sink)

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        self._listeners.discard(listener)

    def count_dropped(self, stage: str, n: int = 1) -> None:
        self.frames_dropped += n
        self._metrics.dropped_frames.labels(stage).inc(n)

    # -- clients -------------------------------------------------------------------------

    def attach(self, client: object) -> None:
        self._clients.add(client)
        self.ever_attached = True

    def detach(self, client: object) -> None:
        if client in self._clients:
            self._clients.discard(client)
            if not self._clients:
                self.idle_since = time.monotonic()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Register a coroutine function run when the session closes (peer, sockets)."""
        self._closers.append(closer)

    def expired(self, now: float) -> bool:
        if self.failed:
            return True
        if self._clients or self.closed.is_set():
            return False
        limit = self._settings.detach_grace_s if self.ever_attached else self._settings.idle_timeout_s
        return now - self.idle_since >= limit

    async def close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        log.info("session %s closed: %s", self.id, reason)
        current = asyncio.current_task()
        for closer in self._closers:
            try:
                async with asyncio.timeout(2.0):
                    await closer()
            except Exception:
                log.debug("session %s: closer failed", self.id, exc_info=True)
        try:
            async with asyncio.timeout(ENGINE_CLOSE_TIMEOUT_S):
                await self.engine.close()
        except TimeoutError:
            log.warning("session %s: the engine took over %g s to stop; its audio, renderer and streams were "
                        "released without waiting", self.id, ENGINE_CLOSE_TIMEOUT_S)
        except Exception:
            log.exception("session %s: engine close failed", self.id)
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._sinks.clear()
        self._listeners.clear()
        self._metrics.forget_session(self.id)

    def describe(self) -> dict:
        return {
            "session_id": self.id,
            "state": "ended" if self.closed.is_set() else "live",
            "close_reason": self.close_reason or None,
            "failure": self.failure or None,
            "avatar_id": self.params.avatar_id,
            "mode": self.params.mode,
            "size": self.params.size,
            "motion": self.params.motion,
            "motion_backend": self.engine.model.backend,
            "clients": self.client_count,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "fps": round(self.fps, 2),
            "frame_index": self.last_index,
            "latency_ms": float(self.engine.latency_ms),
            "stats": asdict(self.engine.stats),
        }


def _failure_reason(error: BaseException) -> str:
    """``render_worker`` when the render workers failed ``error``'s frame, ``engine_error`` otherwise."""
    return "render_worker" if isinstance(error, RenderWorkerError) else "engine_error"


class SessionRegistry:
    def __init__(self, settings: Settings, store: AvatarStore, metrics: Metrics, executor: Executor | None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.executor = executor
        self.render_workers: RenderWorkers | None = None  # set by the app while it runs
        # The engine session class; a benchmark sets a subclass that records what it is pushed.
        self.engine_type: type[Session] = Session
        # One batcher for every session: those running diffusion models step together.
        self.batcher = (MotionBatcher(BatchingConfig(window_s=settings.motion_batch_window_ms / 1000.0))
                        if settings.motion_batching else None)
        self._sessions: dict[str, LiveSession] = {}
        # Ended sessions, oldest first: id -> (token, when it ended, its last describe()).
        self._ended: collections.OrderedDict[str, tuple[str, float, dict]] = collections.OrderedDict()
        self._starting = 0
        metrics.session_tasks.set_function(lambda: sum(live.task_count for live in self._sessions.values()))
        metrics.sessions_fps_min.set_function(self._min_fps)
        self._closing: set[str] = set()
        self._closers: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap())

    def _min_fps(self) -> float:
        measured = [live.fps for live in self._sessions.values() if live.fps_measured and not live.closed.is_set()]
        return min(measured) if measured else math.nan

    async def create(self, params: SessionParams) -> LiveSession:
        if len(self._sessions) + self._starting >= self.settings.max_sessions:
            self.metrics.sessions_rejected.inc()
            raise ApiError(503, f"server is at its limit of {self.settings.max_sessions} sessions; retry later",
                           {"Retry-After": str(self.settings.retry_after_s)})
        if not self.store.exists(params.avatar_id):
            raise not_found(f"avatar {params.avatar_id!r}")
        self._starting += 1
        try:
            rig = await self.store.rig_async(params.avatar_id, params.size)
            try:
                model = await asyncio.to_thread(create_motion_model, params.motion or self.settings.motion,
                                                self.settings.motion_backend)
            except ValueError as error:
                raise ApiError(422, f"motion: {error}") from None
            except Exception as error:  # missing or unreadable weights: the server's problem, said plainly
                log.exception("motion model %r cannot be loaded", params.motion)
                raise ApiError(503, f"motion model {params.motion!r} is unavailable on this server: {error}") from None
            options = params.engine_options(self.settings.max_pending_seconds)
            engine = self.engine_type(rig, model, options, executor=self.executor, batcher=self.batcher,
                                      render_workers=self.render_workers)
        except KeyError:
            raise not_found(f"avatar {params.avatar_id!r}") from None
        finally:
            self._starting -= 1
        session_id = secrets.token_hex(8)
        live = LiveSession(session_id, secrets.token_urlsafe(24), params, engine, self.metrics, self.settings)
        self._sessions[session_id] = live
        live.start()
        self.metrics.sessions_created.inc()
        self.metrics.active_sessions.set(len(self._sessions))
        return live

    async def check_motion(self, spec: str) -> bool:
        """Load ``spec`` once (start-up): a missing model is logged now, not at the first session."""
        try:
            await asyncio.to_thread(create_motion_model, spec, self.settings.motion_backend)
            return True
        except Exception as error:
            log.error("default motion model %r is unavailable: %s", spec, error)
            return False

    def ids(self) -> list[str]:
        return list(self._sessions)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def authorize(self, session_id: str, token: str | None) -> LiveSession:
        """The session if ``token`` is its token: 404 unknown id, 401 no token, 403 wrong token."""
        live = self._sessions.get(session_id)
        if live is None or live.closed.is_set():
            raise not_found(f"session {session_id!r}")
        _check_token(live.token, token)
        return live

    def describe(self, session_id: str, token: str | None) -> dict:
        """A live session's state, or an ended one's last state with why it ended (kept
        ``ENDED_KEEP_S``); the same 404/401/403 as :meth:`authorize`."""
        live = self._sessions.get(session_id)
        if live is not None:
            _check_token(live.token, token)
            return live.describe()
        ended = self._ended.get(session_id)
        if ended is None:
            raise not_found(f"session {session_id!r}")
        _check_token(ended[0], token)
        return ended[2]

    def _remember(self, live: LiveSession) -> None:
        now = time.monotonic()
        self._ended[live.id] = (live.token, now, live.describe())
        while self._ended and (len(self._ended) > ENDED_KEEP or now - next(iter(self._ended.values()))[1] > ENDED_KEEP_S):
            self._ended.popitem(last=False)

    async def close(self, session_id: str, reason: str) -> bool:
        live = self._sessions.get(session_id)
        if live is None or session_id in self._closing:
            return False
        self._closing.add(session_id)
        try:
            await live.close(reason)
        finally:
            self._remember(live)
            self._sessions.pop(session_id, None)
            self._closing.discard(session_id)
            self.metrics.active_sessions.set(len(self._sessions))
        return True

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for live in list(self._sessions.values()):
                if live.id not in self._closing and live.expired(now):
                    if live.failed:
                        reason = live.failed
                    elif live.ever_attached:
                        reason = "last client left"
                    else:
                        reason = "no client attached in time"
                    task = asyncio.ensure_future(self.close(live.id, reason))
                    self._closers.add(task)
                    task.add_done_callback(self._closers.discard)

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await asyncio.gather(*(self.close(sid, "server shutting down") for sid in list(self._sessions)),
                             return_exceptions=True)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close)


def _check_token(expected: str, token: str | None) -> None:
    if not token:
        raise ApiError(401, "this session needs its token: 'Authorization: Bearer <token>' or ?token=",
                       {"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(token.encode(), expected.encode()):
        raise ApiError(403, "wrong token for this session")
