"""Prometheus metrics, one registry per app (so several apps can live in one process).

No series carries a session id unless ``per_session`` (``Settings.metrics_per_session``) is
on: a long-running server sees an unbounded number of sessions, and a scraper keeps every
series it ever saw.
"""

from __future__ import annotations

import asyncio

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)

# Why a session failed: the label values of emolive_sessions_failed_total (a fixed set).
FAILURE_REASONS = (
    "engine_error",  # the engine's frame or event stream raised or ended on its own
    "render_worker",  # the render worker process rendering the session failed or exited
    "peer_failed",  # the WebRTC peer connection failed (ICE or DTLS)
    "peer_timeout",  # the WebRTC peer never connected after its offer was answered
)


class Metrics:
    def __init__(self, per_session: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.per_session = per_session
        r = self.registry
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        ProcessCollector(registry=r)
        self.active_sessions = Gauge("emolive_active_sessions", "Live streaming sessions.", registry=r)
        self.sessions_created = Counter("emolive_sessions_created_total", "Sessions created.", registry=r)
        self.sessions_rejected = Counter("emolive_sessions_rejected_total",
                                         "Session requests refused because the server was full.", registry=r)
        self.sessions_failed = Counter(
            "emolive_sessions_failed_total",
            "Sessions ended by a failure, by reason: " + ", ".join(FAILURE_REASONS) + ".",
            ["reason"], registry=r)
        for reason in FAILURE_REASONS:  # every reason is a series from the start, at 0
            self.sessions_failed.labels(reason)
        self.frames_out = Counter("emolive_frames_out_total",
                                  "Video frames produced by sessions and handed to clients.", registry=r)
        self.dropped_frames = Counter(
            "emolive_dropped_frames_total",
            "Video frames dropped: 'engine' = the session skipped rendering to stay real time, "
            "'webrtc'/'ws' = a slow client's queue was full.",
            ["stage"], registry=r)
        self.sessions_fps = Histogram(
            "emolive_sessions_fps", "Video frames per second of each live session, observed once a second per session.",
            buckets=(5, 10, 15, 20, 22, 23, 24, 24.5, 25, 25.5, 30), registry=r)
        self.sessions_fps_min = Gauge(
            "emolive_sessions_fps_min", "Lowest frames per second over the live sessions' last second (NaN: none).",
            registry=r)
        self.fps = (Gauge("emolive_session_fps", "Video frames per second each session produced over the last second.",
                          ["session"], registry=r) if per_session else None)
        self.engine_latency = Histogram(
            "emolive_engine_latency_seconds", "Engine latency (audio in -> frame out) reported by sessions.",
            buckets=(0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.3, 0.5, 1.0, 2.0), registry=r)
        self.peers = Gauge("emolive_webrtc_peers", "Connected WebRTC peers.", registry=r)
        self.websockets = Gauge("emolive_websockets", "Open session WebSockets.", registry=r)
        self.avatars = Gauge("emolive_avatars", "Avatars in the store (bundled one included).", registry=r)
        self.asyncio_tasks = Gauge("emolive_asyncio_tasks", "Tasks on the server's event loop.", registry=r)
        self.session_tasks = Gauge("emolive_session_tasks", "Tasks owned by live sessions (pumps, peers, ...).",
                                   registry=r)

    def observe_fps(self, session_id: str, fps: float) -> None:
        self.sessions_fps.observe(fps)
        if self.fps is not None:
            self.fps.labels(session_id).set(fps)

    def forget_session(self, session_id: str) -> None:
        if self.fps is not None:
            try:
                self.fps.remove(session_id)
            except KeyError:
                pass

    def render(self) -> tuple[bytes, str]:
        """The exposition text; called on the server's event loop, whose tasks it counts."""
        self.asyncio_tasks.set(len(asyncio.all_tasks()))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
