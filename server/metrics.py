"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_sessions = Gauge("emolive_active_sessions", "Live streaming sessions.", registry=r)
        self.sessions_created = Counter("emolive_sessions_created_total", "Sessions created.", registry=r)
        self.sessions_rejected = Counter("emolive_sessions_rejected_total",
                                         "Session requests refused because the server was full.", registry=r)
        self.frames_out = Counter("emolive_frames_out_total",
                                  "Video frames produced by sessions and handed to clients.", registry=r)
        self.dropped_frames = Counter(
            "emolive_dropped_frames_total",
            "Video frames dropped: 'engine' = the session skipped rendering to stay real time, "
            "'webrtc'/'ws' = a slow client's queue was full.",
            ["stage"], registry=r)
        self.fps = Gauge("emolive_session_fps", "Video frames per second each session produced over the last second.",
                         ["session"], registry=r)
        self.engine_latency = Histogram(
            "emolive_engine_latency_seconds", "Engine latency (audio in -> frame out) reported by sessions.",
            buckets=(0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2, 0.3, 0.5, 1.0, 2.0), registry=r)
        self.peers = Gauge("emolive_webrtc_peers", "Connected WebRTC peers.", registry=r)
        self.websockets = Gauge("emolive_websockets", "Open session WebSockets.", registry=r)
        self.avatars = Gauge("emolive_avatars", "Avatars in the store (bundled one included).", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
